"""Write a phantom CT series as CT Image Storage files with scanner-like headers, so the
service, the classifier and the end-to-end tests see what a planning CT would send.

Pure numpy + pydicom. UIDs derive from seed and region, so one seed always writes the
same study. Stored pixels are HU + 1024 (RescaleIntercept -1024, slope 1, 12 bits).

    python -m models.ct.phantom_dicom OUT --seed 43000 --region abdomen --slices 24 --size 128
"""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from models.ct.phantom import REGIONS, CTSubject, generate_subject

UID_PREFIX = "1.2.826.0.1.3680043.8.498."  # pydicom's documented example root
_PROTOCOL = {  # region: study description, series description, body part, kernel, kVp, mAs
    "abdomen": ("CT Abdomen Pelvis RT planning", "Abdomen 3.0 Br40", "ABDOMEN", "Br40", 120, 180),
    "head_neck": ("CT Head Neck RT planning", "HeadNeck 2.0 Hr40", "HEADNECK", "Hr40", 120, 250),
}


def _uid(*parts: object) -> str:
    return generate_uid(prefix=UID_PREFIX, entropy_srcs=[str(p) for p in parts])


def to_stored(hu: np.ndarray) -> np.ndarray:
    """HU to stored uint16 with intercept -1024 (clipped to 12 bits: -1024..3071 HU)."""
    return np.clip(np.rint(hu + 1024.0), 0, 4095).astype(np.uint16)


def ct_headers(subject: CTSubject, *, study_uid: str | None = None,
               patient_id: str | None = None) -> list[Dataset]:
    """One header per slice (no pixel data), feet to head."""
    seed, region = subject.seed, subject.region
    study_desc, series_desc, body_part, kernel, kvp, mas = _PROTOCOL[region]
    n, rows, cols = subject.ct.shape
    study_uid = study_uid or _uid("ct-study", seed, region)
    series_uid = _uid("ct-series", study_uid, region)
    frame_uid = _uid("ct-frame", study_uid)
    patient_id = patient_id or f"PHANTOM-CT-{seed}"
    day = dt.date(2024, 1, 1) + dt.timedelta(days=seed % 365)
    start = dt.datetime.combine(day, dt.time(8, 0)) + dt.timedelta(minutes=seed % 300)
    px = subject.pixel_spacing_mm
    x0, y0 = -(cols - 1) / 2 * px, -(rows - 1) / 2 * px
    out = []
    for k in range(n):
        ds = Dataset()
        sop_uid = _uid("ct-sop", series_uid, k)
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = day.strftime("%Y%m%d")
        ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = start.strftime("%H%M%S")
        ds.AccessionNumber = f"CT{seed:08d}"
        ds.Modality = "CT"
        ds.Manufacturer = "SIEMENS"
        ds.ManufacturerModelName = "SOMATOM go.Open Pro"
        ds.SoftwareVersions = "syngo CT VA40 (phantom)"
        ds.InstitutionName = "Phantom Hospital"
        ds.StationName = "PHANTOM-CT"
        ds.ReferringPhysicianName = ""
        ds.StudyDescription = study_desc
        ds.SeriesDescription = series_desc
        ds.ProtocolName = study_desc
        ds.PatientName = f"PHANTOM^CT^{seed}"
        ds.PatientID = patient_id
        ds.PatientBirthDate = "19600101"
        ds.PatientSex = "M" if region == "abdomen" else ("F" if seed % 2 else "M")
        ds.PatientAge = "064Y"
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
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = "1"
        ds.SeriesNumber = 2
        ds.AcquisitionNumber = 1
        ds.InstanceNumber = k + 1
        z = float(subject.z_mm[k])
        ds.ImagePositionPatient = [f"{x0:.4f}", f"{y0:.4f}", f"{z:.4f}"]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        ds.SliceLocation = f"{z:.4f}"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = rows, cols
        ds.PixelSpacing = [f"{px:.6f}", f"{px:.6f}"]
        ds.BitsAllocated = 16
        ds.BitsStored = 12
        ds.HighBit = 11
        ds.PixelRepresentation = 0
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
    if region not in REGIONS:
        raise ValueError(f"region must be one of {REGIONS}, got {region!r}")
    if subject is None:
        subject = generate_subject(seed, region, n_slices=n_slices, size=size)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pixels = to_stored(subject.ct)
    paths = []
    for k, ds in enumerate(ct_headers(subject, study_uid=study_uid, patient_id=patient_id)):
        ds.PixelData = pixels[k].tobytes()
        path = out_dir / f"ct-{region}-{seed}-{k + 1:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


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
