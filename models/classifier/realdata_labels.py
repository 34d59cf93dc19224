"""The real scanner series of `../shared/realdata` with the class a radiologist gives them
from their headers (and a look at the pixels): the pixel classifier's held-out real test
data (`heldout.py`).

The files are read from that folder when they are needed; nothing of them is copied here.
A series is named by the path of its file or folder relative to the root; its collection
(the first path component: the package it was published with) is the unit of hold-out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dicom_synth.classify.labels import LABELS
from dicom_synth.series import group_series
from models.classifier.realdata import read_input

HELD_OUT_COLLECTION = "pydicom_data"
"""The held-out real source of `heldout.py` (it holds the only real CTs)."""

REAL_SERIES: dict[str, tuple[str, str]] = {
    # path under the root: (label, why)
    "dcm_qa_enh/Siemens_XA10_REST1": ("unknown", "fMRI EPI, 64x64 multiband"),
    "heudiconv/axasc35.dcm": ("unknown", "EPI, ascending 35 slices"),
    "heudiconv/enhanced_XA_anat-scout_MPR_cor.dcm": ("unknown", "localiser MPR, coronal"),
    "heudiconv/phantom.dcm": ("unknown", "AAHead_Scout localiser"),
    "heudiconv/b0dwiForFmap": ("unknown", "brain DWI b 5/1500 mosaics"),
    "nibabel/csa_slice_norm.dcm": ("unknown", "resting-state fMRI (no pixel data)"),
    "nibabel/philips_mprage.dcm": ("unknown", "MPRAGE test file, pixels all zero"),
    "nibabel/siemens_dwi_0.dcm": ("unknown", "brain DTI b 0/1000 mosaics"),
    "nibabel/slicethickness_empty_string.dcm": ("unknown", "TOF MIP"),
    "pydicom_data/693_UNCR.dcm": ("ct_head_neck", "non-contrast head CT 5 mm"),
    "pydicom_data/MR-SIEMENS-DICOM-WithOverlays.dcm": ("unknown", "abdominal VIBE MPR with overlays"),
    "pydicom_data/MR2_UNCR.dcm": ("unknown", "Philips T1 SE 1024, shoulder"),
    "pydicom_data/bad_sequence.dcm": ("ct_head_neck", "neck CT"),
    "pydicom_data/eCT_Supplemental.dcm": ("unknown", "enhanced CT perfusion map"),
    "pydicom_data/emri_small.dcm": ("unknown", "64x64 enhanced MR test volume"),
    "pydicom_data/explicit_VR-UN.dcm": ("ct_abdomen_pelvis", "pancreas CT"),
}


@dataclass
class RealSeries:
    key: str  # REAL_SERIES key
    collection: str
    label: str
    x: np.ndarray  # (k, 2, S, S) float16 network input


@dataclass
class RealSet:
    series: list[RealSeries] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def arrays(self, collections: set[str] | None = None,
               first_series: int = 20_000_000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """x, y, series index of the series in `collections` (all when None)."""
        chosen = [s for s in self.series if collections is None or s.collection in collections]
        if not chosen:
            return np.zeros((0, 2, 1, 1), np.float16), np.zeros(0, np.int64), np.zeros(0, np.int64)
        ys = np.concatenate([[LABELS.index(s.label)] * len(s.x) for s in chosen]).astype(np.int64)
        ss = np.concatenate([[first_series + i] * len(s.x) for i, s in enumerate(chosen)]).astype(np.int64)
        return np.concatenate([s.x for s in chosen]), ys, ss


def key_of(root: Path, files: list[Path]) -> str | None:
    """The REAL_SERIES entry that names one of the series' files (or their folder)."""
    for f in files:
        rel = Path(f).resolve().relative_to(root.resolve()).as_posix()
        for key in REAL_SERIES:
            if rel == key or rel.startswith(key + "/"):
                return key
    return None


def load_real_series(root: Path) -> RealSet:
    """Every labelled series under root, preprocessed as the service does it."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no such folder: {root}")
    out = RealSet()
    for group in group_series([root]):
        key = key_of(root, group.files)
        if key is None:
            out.skipped.append(f"{group.files[0]}: not in REAL_SERIES (label it first)")
            continue
        try:
            _, x = read_input(group)
        except Exception as exc:  # no pixels, undecodable: say so, keep going
            out.skipped.append(f"{key}: {exc}")
            continue
        out.series.append(RealSeries(key, key.split("/")[0], REAL_SERIES[key][0], x))
    return out
