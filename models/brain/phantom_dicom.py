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

from pydicom.dataset import Dataset
from pydicom.uid import MRImageStorage

from models.brain.phantom import CONTRASTS, SEQUENCES, BrainSubject, generate_subject
from models.common import phantom_dicom as common

IMAGE_TYPE = ("ORIGINAL", "PRIMARY", "M", "NORM", "DIS2D")
# contrast: series description, series number, scanning sequence, variant, options, flip, ETL,
# bandwidth, minutes after study start
_PROTOCOL = {
    "t1": ("t1_se_tra", 3, "SE", ["SK", "SP"], "", 90, 1, 130, 4),
    "t2": ("t2_tse_tra", 4, "SE", ["SK", "SP"], "", 150, 15, 220, 7),
    "flair": ("t2_tirm_tra_dark-fluid", 5, ["SE", "IR"], ["SK", "SP", "MP"], "IR", 150, 16, 250, 10),
    "t1c": ("t1_se_tra_post_Gd", 7, "SE", ["SK", "SP"], "", 90, 1, 130, 18),
}


def brain_headers(subject: BrainSubject, contrast: str, *, study_uid: str | None = None,
                  patient_id: str | None = None) -> list[Dataset]:
    """One header per slice (no pixel data), feet to head."""
    desc, number, ss, variant, options, flip, etl, bw, minutes = _PROTOCOL[contrast]
    tr, te, ti, agent = SEQUENCES[contrast]
    seed = subject.seed
    n, rows, cols = subject.images[contrast].shape
    study_uid = study_uid or common.uid("brain-study", seed)
    series_uid = common.uid("brain-series", study_uid, contrast)
    frame_uid = common.uid("brain-frame", study_uid)
    patient_id = patient_id or f"PHANTOM-BRAIN-{seed}"
    day, start = common.study_day(seed, 10, 200)
    acq = start + dt.timedelta(minutes=minutes)
    px = subject.pixel_spacing_mm
    out = []
    for k in range(n):
        ds = common.new_instance(MRImageStorage, common.uid("brain-sop", series_uid, k), IMAGE_TYPE, day,
                          start.strftime("%H%M%S.%f"), acq.strftime("%H%M%S.%f"))
        ds.AccessionNumber = f"MRB{seed:07d}"
        common.set_site(ds, "MR", "Skyra", "syngo MR E11 (phantom)", "PHANTOM-MR")
        ds.StudyDescription = "MRT Schaedel mit KM"
        ds.SeriesDescription = desc
        ds.ProtocolName = desc
        common.set_patient(ds, f"PHANTOM^BRAIN^{seed}", patient_id, "19650101", "F" if seed % 2 else "M", "059Y")
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
        common.set_mr_acquisition(ds, frequency=123.2, echo_train=etl, bandwidth=bw, coil="Head_32", shape=(rows, cols))
        ds.FlipAngle = flip
        ds.PatientPosition = "HFS"
        if agent:
            ds.ContrastBolusAgent = "Gadovist"
            ds.ContrastBolusRoute = "IV"
            ds.ContrastBolusVolume = 7.5
            ds.ContrastBolusTotalDose = 7.5
            ds.ContrastBolusIngredient = "GADOLINIUM"
        common.set_plane(ds, study_uid=study_uid, series_uid=series_uid, frame_uid=frame_uid, series_number=number,
                         index=k, z=float(subject.z_mm[k]), corner=common.centred_corner(rows, cols, px),
                         shape=(rows, cols), pixel_spacing=[f"{px:.6f}", f"{px:.6f}"])
        ds.WindowCenter = 1000
        ds.WindowWidth = 2000
        out.append(ds)
    return out


to_stored = common.to_stored  # the brain's stored pixels: scanner units, 12 bits


def write_brain_series(out_dir: Path, seed: int, n_slices: int = 16, size: int = 128,
                       contrast: str = "t1", *, study_uid: str | None = None,
                       patient_id: str | None = None, subject: BrainSubject | None = None) -> list[Path]:
    """Write one contrast of a phantom brain subject, one file per slice."""
    common.require_one_of(contrast, CONTRASTS, "contrast")
    if subject is None:
        subject = generate_subject(seed, n_slices=n_slices, size=size)
    headers = brain_headers(subject, contrast, study_uid=study_uid, patient_id=patient_id)
    return common.write_series(out_dir, headers, to_stored(subject.images[contrast]), f"{contrast}-{seed}")


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
