"""Write phantom subjects as MR Image Storage files with Siemens-like breast protocol headers,
so the service, the classifier and the pairing code see what a Prisma would send.

Pure numpy + pydicom (no torch). UIDs are derived from the seed, so the same seed always
writes the same study, and the T1 and the DCE phase share study and frame of reference.

    python -m models.dce.phantom_dicom OUT --seed 3000 --slices 48 --size 384 [--which both]
"""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from models.common import phantom_dicom as common
from models.dce import physics as ph
from models.dce.phantom import PhantomSubject, generate_subject

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
SERIES_KINDS = ("t1", "dce1")

# Per-series protocol headers: the seed 000 Prisma protocol (see SEEDS.md).
_PROTOCOL = {
    "t1": {
        "seq": ph.T1_FLASH_NONFS, "SeriesNumber": 5, "ScanOptions": "",
        "SequenceVariant": "SP", "SequenceName": "*fl3d1", "PixelBandwidth": 450,
        "ImageType": ["ORIGINAL", "PRIMARY", "M", "ND", "NORM"],
        "offset_s": 0,
    },
    "dce1": {
        "seq": ph.VIBE_SPAIR_DCE, "SeriesNumber": 8, "ScanOptions": "FS",
        "SequenceVariant": ["SP", "OSP"], "SequenceName": "*fl3d1", "PixelBandwidth": 590,
        "ImageType": ["ORIGINAL", "PRIMARY", "M", "ND", "NORM"],
        "offset_s": 420,
    },
}


def to_stored(volume: np.ndarray, bits: int = 12) -> np.ndarray:
    """Scanner units to the stored uint16 pixels (rounded, clipped to the stored bit depth)."""
    return common.to_stored(volume, bits=bits)


def write_phantom_series(out_dir: Path, seed: int, n_slices: int = 48, size: int = 384, *,
                         which: str = "t1", study_uid: str | None = None,
                         patient_id: str | None = None,
                         subject: PhantomSubject | None = None) -> list[Path]:
    """Write one series of a phantom subject, one file per slice; returns the paths.

    `subject` lets a caller that writes both series generate the subject once."""
    common.require_one_of(which, SERIES_KINDS, "which")
    if subject is None:
        subject = generate_subject(seed, n_slices=n_slices, size=size)
    pixels = to_stored(subject.t1 if which == "t1" else subject.dce1)
    headers = series_headers(subject, which=which, study_uid=study_uid, patient_id=patient_id)
    return common.write_series(out_dir, headers, pixels, f"{which}-{seed}")


def write_phantom_study(out_dir: Path, seed: int, n_slices: int = 48, size: int = 384, *,
                        patient_id: str | None = None) -> dict[str, list[Path]]:
    """Both series of one subject under out_dir/t1 and out_dir/dce1."""
    subject = generate_subject(seed, n_slices=n_slices, size=size)
    return {w: write_phantom_series(Path(out_dir) / w, seed, which=w, patient_id=patient_id,
                                    subject=subject) for w in SERIES_KINDS}


def series_headers(subject: PhantomSubject, *, which: str, study_uid: str | None = None,
                   patient_id: str | None = None) -> list[Dataset]:
    """One header per slice (no pixel data), sorted feet to head."""
    proto = _PROTOCOL[which]
    seq: ph.Sequence = proto["seq"]
    seed = subject.seed
    n, rows, cols = subject.t1.shape
    study_uid = study_uid or common.uid("study", seed)
    series_uid = common.uid("series", study_uid, which)
    frame_uid = common.uid("frame", study_uid)
    patient_id = patient_id or f"PHANTOM-{seed:04d}"
    day, start = common.study_day(seed, 9, 300)
    acq = start + dt.timedelta(seconds=proto["offset_s"])
    px = subject.pixel_spacing_mm
    out = []
    for k in range(n):
        ds = common.new_instance(MR_IMAGE_STORAGE, common.uid("sop", series_uid, k), proto["ImageType"], day,
                          start.strftime("%H%M%S.%f"), acq.strftime("%H%M%S.%f"))
        ds.AccessionNumber = f"ACC{seed:06d}"
        common.set_site(ds, "MR", "Prisma", "syngo MR XA30 (phantom)", "PHANTOM")
        ds.StudyDescription = "MR Mamma beidseits"
        ds.SeriesDescription = seq.name
        ds.ProtocolName = seq.name
        common.set_patient(ds, f"PHANTOM^BREAST^{seed}", patient_id, "19700101", "F", "054Y")
        ds.PatientWeight = 65
        ds.BodyPartExamined = "BREAST"
        ds.Laterality = ""  # both breasts in one image (Type 2C, empty allowed)
        ds.ScanningSequence = "GR"
        ds.SequenceVariant = proto["SequenceVariant"]
        ds.ScanOptions = proto["ScanOptions"]
        ds.MRAcquisitionType = "3D"
        ds.SequenceName = proto["SequenceName"]
        ds.AngioFlag = "N"
        ds.SliceThickness = f"{subject.slice_spacing_mm:g}"
        ds.SpacingBetweenSlices = f"{subject.slice_spacing_mm:g}"
        ds.RepetitionTime = f"{seq.tr_ms:g}"
        ds.EchoTime = f"{seq.te_ms:g}"
        common.set_mr_acquisition(ds, frequency=123.25, echo_train=1, bandwidth=proto["PixelBandwidth"],
                                  coil="Breast_18", shape=(rows, cols))
        ds.FlipAngle = f"{seq.flip_deg:g}"
        ds.PatientPosition = "FFP"
        common.set_plane(ds, study_uid=study_uid, series_uid=series_uid, frame_uid=frame_uid,
                         series_number=proto["SeriesNumber"], index=k, z=float(subject.z_mm[k]),
                         corner=common.centred_corner(rows, cols, px), shape=(rows, cols),
                         pixel_spacing=[f"{px:g}", f"{px:g}"])
        ds.ImagesInAcquisition = n
        ds.WindowCenter = 800 if which == "t1" else 500
        ds.WindowWidth = 1800 if which == "t1" else 1200
        if which == "dce1":
            ds.ContrastBolusAgent = "Gadobutrol"
            ds.ContrastBolusRoute = "IV"
            ds.ContrastBolusVolume = 6.5
            ds.ContrastBolusTotalDose = 6.5
            ds.ContrastFlowRate = 2
            ds.ContrastBolusIngredient = "GADOLINIUM"
            ds.TemporalPositionIdentifier = 2  # 1 is the pre-contrast mask
            ds.NumberOfTemporalPositions = 7
        out.append(ds)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Write a phantom breast study as DICOM files.")
    p.add_argument("out", type=Path)
    p.add_argument("--seed", type=int, default=3000, help="subject seed (3000-3999: test split)")
    p.add_argument("--slices", type=int, default=48)
    p.add_argument("--size", type=int, default=384)
    p.add_argument("--which", choices=[*SERIES_KINDS, "both"], default="both")
    p.add_argument("--patient-id", default=None)
    a = p.parse_args(argv)
    if a.which == "both":
        written = write_phantom_study(a.out, a.seed, a.slices, a.size, patient_id=a.patient_id)
    else:
        written = {a.which: write_phantom_series(a.out, a.seed, a.slices, a.size, which=a.which,
                                                 patient_id=a.patient_id)}
    for which, paths in written.items():
        print(f"{which}: {len(paths)} files in {paths[0].parent}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
