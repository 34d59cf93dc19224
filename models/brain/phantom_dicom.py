"""Write phantom brain series as MR Image Storage files with Siemens-like 3 T protocol
headers (T1 SE, T1 SE post-gadolinium, T2 TSE, T2 TIRM dark-fluid), so the classifier and
the end-to-end tests see what a Skyra would send. All contrasts of one seed share study,
patient and frame of reference, as one examination would.

    python -m models.brain.phantom_dicom OUT --seed 53000 --contrast t1 --slices 16 --size 128
"""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from models.brain.phantom import CONTRASTS, SEQUENCES, BrainSubject, generate_subject

UID_PREFIX = "1.2.826.0.1.3680043.8.498."
# contrast: series description, series number, scanning sequence, variant, options, flip, ETL,
# bandwidth, minutes after study start
_PROTOCOL = {
    "t1": ("t1_se_tra", 3, "SE", ["SK", "SP"], "", 90, 1, 130, 4),
    "t2": ("t2_tse_tra", 4, "SE", ["SK", "SP"], "", 150, 15, 220, 7),
    "flair": ("t2_tirm_tra_dark-fluid", 5, ["SE", "IR"], ["SK", "SP", "MP"], "IR", 150, 16, 250, 10),
    "t1c": ("t1_se_tra_post_Gd", 7, "SE", ["SK", "SP"], "", 90, 1, 130, 18),
}


def _uid(*parts: object) -> str:
    return generate_uid(prefix=UID_PREFIX, entropy_srcs=[str(p) for p in parts])


def to_stored(volume: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(volume), 0, 4095).astype(np.uint16)


def brain_headers(subject: BrainSubject, contrast: str, *, study_uid: str | None = None,
                  patient_id: str | None = None) -> list[Dataset]:
    """One header per slice (no pixel data), feet to head."""
    desc, number, ss, variant, options, flip, etl, bw, minutes = _PROTOCOL[contrast]
    tr, te, ti, agent = SEQUENCES[contrast]
    seed = subject.seed
    n, rows, cols = subject.images[contrast].shape
    study_uid = study_uid or _uid("brain-study", seed)
    series_uid = _uid("brain-series", study_uid, contrast)
    frame_uid = _uid("brain-frame", study_uid)
    patient_id = patient_id or f"PHANTOM-BRAIN-{seed}"
    day = dt.date(2024, 1, 1) + dt.timedelta(days=seed % 365)
    start = dt.datetime.combine(day, dt.time(10, 0)) + dt.timedelta(minutes=seed % 200)
    acq = start + dt.timedelta(minutes=minutes)
    px = subject.pixel_spacing_mm
    x0, y0 = -(cols - 1) / 2 * px, -(rows - 1) / 2 * px
    out = []
    for k in range(n):
        ds = Dataset()
        sop_uid = _uid("brain-sop", series_uid, k)
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NORM", "DIS2D"]
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = day.strftime("%Y%m%d")
        ds.StudyTime = start.strftime("%H%M%S.%f")
        ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = acq.strftime("%H%M%S.%f")
        ds.AccessionNumber = f"MRB{seed:07d}"
        ds.Modality = "MR"
        ds.Manufacturer = "SIEMENS"
        ds.ManufacturerModelName = "Skyra"
        ds.SoftwareVersions = "syngo MR E11 (phantom)"
        ds.InstitutionName = "Phantom Hospital"
        ds.StationName = "PHANTOM-MR"
        ds.ReferringPhysicianName = ""
        ds.StudyDescription = "MRT Schaedel mit KM"
        ds.SeriesDescription = desc
        ds.ProtocolName = desc
        ds.PatientName = f"PHANTOM^BRAIN^{seed}"
        ds.PatientID = patient_id
        ds.PatientBirthDate = "19650101"
        ds.PatientSex = "F" if seed % 2 else "M"
        ds.PatientAge = "059Y"
        ds.PatientWeight = 75
        ds.BodyPartExamined = "HEAD"
        ds.ScanningSequence = ss
        ds.SequenceVariant = variant
        ds.ScanOptions = options
        ds.MRAcquisitionType = "2D"
        ds.SequenceName = {"t1": "*se2d1", "t1c": "*se2d1", "t2": "*tse2d1_15",
                           "flair": "*tir2d1_16"}[contrast]
        ds.AngioFlag = "N"
        ds.SliceThickness = f"{min(subject.slice_spacing_mm, 5.0):.2f}"
        ds.SpacingBetweenSlices = f"{subject.slice_spacing_mm:.2f}"
        ds.RepetitionTime = f"{tr:g}"
        ds.EchoTime = f"{te:g}"
        if ti is not None:
            ds.InversionTime = f"{ti:g}"
        ds.NumberOfAverages = 1
        ds.ImagingFrequency = 123.2
        ds.ImagedNucleus = "1H"
        ds.EchoNumbers = 1
        ds.MagneticFieldStrength = 3
        ds.EchoTrainLength = etl
        ds.PercentSampling = 100
        ds.PercentPhaseFieldOfView = 100
        ds.PixelBandwidth = bw
        ds.ReceiveCoilName = "Head_32"
        ds.TransmitCoilName = "Body"
        ds.AcquisitionMatrix = [0, cols, rows, 0]
        ds.InPlanePhaseEncodingDirection = "ROW"
        ds.FlipAngle = flip
        ds.PatientPosition = "HFS"
        if agent:
            ds.ContrastBolusAgent = "Gadovist"
            ds.ContrastBolusRoute = "IV"
            ds.ContrastBolusVolume = 7.5
            ds.ContrastBolusTotalDose = 7.5
            ds.ContrastBolusIngredient = "GADOLINIUM"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = "1"
        ds.SeriesNumber = number
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
        ds.WindowCenter = 1000
        ds.WindowWidth = 2000
        out.append(ds)
    return out


def write_brain_series(out_dir: Path, seed: int, n_slices: int = 16, size: int = 128,
                       contrast: str = "t1", *, study_uid: str | None = None,
                       patient_id: str | None = None, subject: BrainSubject | None = None) -> list[Path]:
    """Write one contrast of a phantom brain subject, one file per slice."""
    if contrast not in CONTRASTS:
        raise ValueError(f"contrast must be one of {CONTRASTS}, got {contrast!r}")
    if subject is None:
        subject = generate_subject(seed, n_slices=n_slices, size=size)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pixels = to_stored(subject.images[contrast])
    paths = []
    for k, ds in enumerate(brain_headers(subject, contrast, study_uid=study_uid, patient_id=patient_id)):
        ds.PixelData = pixels[k].tobytes()
        path = out_dir / f"{contrast}-{seed}-{k + 1:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_brain_study(out_dir: Path, seed: int, n_slices: int = 16, size: int = 128,
                      contrasts: tuple[str, ...] = CONTRASTS) -> dict[str, list[Path]]:
    """Several contrasts of one subject under out_dir/<contrast>/."""
    subject = generate_subject(seed, n_slices=n_slices, size=size)
    return {c: write_brain_series(Path(out_dir) / c, seed, contrast=c, subject=subject) for c in contrasts}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Write a phantom brain MR study as DICOM files.")
    p.add_argument("out", type=Path)
    p.add_argument("--seed", type=int, default=53000, help="subject seed (53000..: test split)")
    p.add_argument("--contrast", choices=[*CONTRASTS, "all"], default="all")
    p.add_argument("--slices", type=int, default=16)
    p.add_argument("--size", type=int, default=128)
    a = p.parse_args(argv)
    chosen = CONTRASTS if a.contrast == "all" else (a.contrast,)
    for c, paths in write_brain_study(a.out, a.seed, a.slices, a.size, chosen).items():
        print(f"{c}: {len(paths)} files in {paths[0].parent}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
