"""Write a phantom CT series as CT Image Storage files with scanner-like headers, so the
service, the classifier and the end-to-end tests see what a planning CT would send; and
the subject's T2 MRI as MR Image Storage files (a Siemens-like T2 TSE of the same region,
in its own frame of reference, or in the CT's as an MRI registered for planning would be).

Pure numpy + pydicom. UIDs derive from seed and region, so one seed always writes the
same study. Stored pixels are HU + 1024 (RescaleIntercept -1024, slope 1, 12 bits).

    python -m models.ct.phantom_dicom OUT --seed 43000 --region abdomen --slices 24 --size 128
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, MRImageStorage

from models.common import phantom_dicom as common
from models.ct.phantom import MR_SCALE, REGIONS, CTSubject, generate_subject

_PROTOCOL = {  # region: study description, series description, body part, kernel, kVp, mAs
    "abdomen": ("CT Abdomen Pelvis RT planning", "Abdomen 3.0 Br40", "ABDOMEN", "Br40", 120, 180),
    "head_neck": ("CT Head Neck RT planning", "HeadNeck 2.0 Hr40", "HEADNECK", "Hr40", 120, 250),
}


def to_stored(hu: np.ndarray) -> np.ndarray:
    """HU to stored uint16 with intercept -1024 (clipped to 12 bits: -1024..3071 HU)."""
    return common.to_stored(hu, offset=1024.0)


def ct_headers(subject: CTSubject, *, study_uid: str | None = None,
               patient_id: str | None = None) -> list[Dataset]:
    """One header per slice (no pixel data), feet to head."""
    seed, region = subject.seed, subject.region
    study_desc, series_desc, body_part, kernel, kvp, mas = _PROTOCOL[region]
    n, rows, cols = subject.ct.shape
    study_uid = study_uid or common.uid("ct-study", seed, region)
    series_uid = common.uid("ct-series", study_uid, region)
    frame_uid = common.uid("ct-frame", study_uid)
    patient_id = patient_id or f"PHANTOM-CT-{seed}"
    day, start = common.study_day(seed, 8, 300)
    px = subject.pixel_spacing_mm
    out = []
    for k in range(n):
        time = start.strftime("%H%M%S")
        ds = common.new_instance(CTImageStorage, common.uid("ct-sop", series_uid, k), ("ORIGINAL", "PRIMARY", "AXIAL"),
                                 day, time, time)
        ds.AccessionNumber = f"CT{seed:08d}"
        common.set_site(ds, "CT", "SOMATOM go.Open Pro", "syngo CT VA40 (phantom)", "PHANTOM-CT")
        ds.StudyDescription = study_desc
        ds.SeriesDescription = series_desc
        ds.ProtocolName = study_desc
        common.set_patient(ds, f"PHANTOM^CT^{seed}", patient_id, "19600101",
                    "M" if region == "abdomen" else ("F" if seed % 2 else "M"), "064Y")
        ds.BodyPartExamined = body_part
        ds.ScanOptions = "HELICAL_CT"
        ds.SliceThickness = f"{subject.slice_spacing_mm:.2f}"
        ds.KVP = kvp
        ds.DataCollectionDiameter = 500
        ds.ReconstructionDiameter = f"{px * cols:.1f}"
        ds.DistanceSourceToDetector = 1085.6
        ds.DistanceSourceToPatient = 595
        ds.GantryDetectorTilt = 0
        ds.TableHeight = 150
        ds.RotationDirection = "CW"
        ds.ExposureTime = 500
        ds.XRayTubeCurrent = int(mas * 2)
        ds.Exposure = mas
        ds.FilterType = "FLAT"
        ds.GeneratorPower = 30
        ds.FocalSpots = 0.7
        ds.ConvolutionKernel = kernel
        ds.PatientPosition = "HFS"
        ds.RevolutionTime = 0.5
        ds.SingleCollimationWidth = 0.6
        ds.TotalCollimationWidth = 38.4
        ds.SpiralPitchFactor = 0.8
        ds.CTDIvol = 12.0 if region == "abdomen" else 40.0
        common.set_plane(ds, study_uid=study_uid, series_uid=series_uid, frame_uid=frame_uid, series_number=2, index=k,
                  z=float(subject.z_mm[k]), corner=common.centred_corner(rows, cols, px), shape=(rows, cols),
                  pixel_spacing=[f"{px:.6f}", f"{px:.6f}"])
        ds.WindowCenter = [40, 400] if region == "abdomen" else [40, 300]
        ds.WindowWidth = [400, 1800] if region == "abdomen" else [350, 2500]
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
        out.append(ds)
    return out


def write_ct_series(out_dir: Path, seed: int, n_slices: int = 24, size: int = 128,
                    region: str = "abdomen", *, study_uid: str | None = None,
                    patient_id: str | None = None, subject: CTSubject | None = None) -> list[Path]:
    """Write one phantom CT series, one file per slice; returns the paths in slice order."""
    common.require_one_of(region, REGIONS, "region")
    if subject is None:
        subject = generate_subject(seed, region, n_slices=n_slices, size=size)
    headers = ct_headers(subject, study_uid=study_uid, patient_id=patient_id)
    return common.write_series(out_dir, headers, to_stored(subject.ct), f"ct-{region}-{seed}")


_MR_PROTOCOL = {  # region: study description, series description, body part, coil
    "abdomen": ("MRT Becken RT Planung", "t2_tse_tra_abd", "ABDOMEN", "Body_18"),
    "head_neck": ("MRT Kopf Hals RT Planung", "t2_tse_tra_hn", "HEADNECK", "HeadNeck_20"),
}


def mr_headers(subject: CTSubject, *, study_uid: str | None = None, patient_id: str | None = None,
               frame_uid: str | None = None) -> list[Dataset]:
    """One header per slice of the subject's T2 MRI (TSE, no fat suppression), on the CT's
    slice grid; `frame_uid`: the CT's frame of reference for an MRI registered to it."""
    seed, region = subject.seed, subject.region
    study_desc, series_desc, body_part, coil = _MR_PROTOCOL[region]
    n, rows, cols = subject.mr.shape
    study_uid = study_uid or common.uid("ct-mr-study", seed, region)
    series_uid = common.uid("ct-mr-series", study_uid, region)
    frame_uid = frame_uid or common.uid("ct-mr-frame", study_uid)
    day, start = common.study_day(seed + 7, 14, 200)
    px = subject.pixel_spacing_mm
    out = []
    for k in range(n):
        time = start.strftime("%H%M%S")
        ds = common.new_instance(MRImageStorage, common.uid("ct-mr-sop", series_uid, k),
                                 ("ORIGINAL", "PRIMARY", "M", "NORM", "DIS2D"), day, time, time)
        ds.AccessionNumber = f"MR{seed:08d}"
        common.set_site(ds, "MR", "MAGNETOM Vida", "syngo MR XA20 (phantom)", "PHANTOM-MR-RT")
        ds.StudyDescription = study_desc
        ds.SeriesDescription = ds.ProtocolName = series_desc
        common.set_patient(ds, f"PHANTOM^CT^{seed}", patient_id or f"PHANTOM-CT-{seed}", "19600101",
                           "M" if region == "abdomen" else ("F" if seed % 2 else "M"), "064Y")
        ds.BodyPartExamined = body_part
        ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions = "SE", ["SK", "SP", "OSP"], ""
        ds.MRAcquisitionType, ds.SequenceName = "2D", "*tse2d1_17"
        ds.SliceThickness = f"{subject.slice_spacing_mm:.2f}"
        ds.RepetitionTime, ds.EchoTime, ds.FlipAngle = "4500", "96", 150
        common.set_mr_acquisition(ds, frequency=123.2, echo_train=17, bandwidth=200, coil=coil, shape=(rows, cols))
        ds.PatientPosition = "HFS"
        common.set_plane(ds, study_uid=study_uid, series_uid=series_uid, frame_uid=frame_uid, series_number=4,
                         index=k, z=float(subject.z_mm[k]), corner=common.centred_corner(rows, cols, px),
                         shape=(rows, cols), pixel_spacing=[f"{px:.6f}", f"{px:.6f}"])
        out.append(ds)
    return out


def write_mr_series(out_dir: Path, subject: CTSubject, *, study_uid: str | None = None,
                    patient_id: str | None = None, frame_uid: str | None = None) -> list[Path]:
    """Write the subject's T2 MRI, one file per slice (stored: signal x MR_SCALE, 12 bits)."""
    headers = mr_headers(subject, study_uid=study_uid, patient_id=patient_id, frame_uid=frame_uid)
    return common.write_series(out_dir, headers, common.to_stored(subject.mr * MR_SCALE),
                               f"mr-{subject.region}-{subject.seed}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Write a phantom planning CT series as DICOM files.")
    p.add_argument("out", type=Path)
    p.add_argument("--seed", type=int, default=43000, help="subject seed (43000..: test split)")
    p.add_argument("--region", choices=REGIONS, default="abdomen")
    p.add_argument("--slices", type=int, default=24)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--patient-id", default=None)
    a = p.parse_args(argv)
    paths = write_ct_series(a.out, a.seed, a.slices, a.size, a.region, patient_id=a.patient_id)
    print(f"{len(paths)} files in {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
