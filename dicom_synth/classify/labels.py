"""The series classes issue 4 asks for, as plain string labels (stable: jobs store them)."""

from __future__ import annotations

UNKNOWN = "unknown"

BREAST = (
    "breast_t1_nc",
    "breast_t2",
    "breast_t2_fs",
    "breast_dwi_low_b",
    "breast_dwi_high_b",
    "breast_adc",
    "breast_dce_pre",
    "breast_dce_early",
    "breast_dce_late",
    "breast_sub",
)
BRAIN = ("brain_t1", "brain_t2", "brain_t1c", "brain_flair")
CT = ("ct_head_neck", "ct_chest", "ct_abdomen_pelvis")

LABELS: tuple[str, ...] = BREAST + BRAIN + CT + (UNKNOWN,)
"""Every label, in the fixed order the pixel model's outputs use."""

DCE_POST = ("breast_dce_early", "breast_dce_late")
