"""Whether a series may be synthesized from, and whether a task fits it.

One place for three decisions the worker, the gateway and the offline CLI share:

- the loop guard (`synthetic_reason`): a synthetic series — ours or anyone's — is never a
  source, whatever the PACS's routing rules forward to us;
- what `source_contrast` means (`check_source_contrast`, `model_source_label`): the brain
  contrast a user says a series is, for when the classifier cannot tell;
- a task's fit (`task_fit`): `pseudo_mri` needs a CT in Hounsfield units, `dce_phase1` a
  breast MR non-contrast T1, `brain_contrasts` a brain MR of one of its contrasts.

Each answers None (fine) or a reason a person can act on.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydicom import Dataset

from dicom_synth.classify import Classification
from dicom_synth.classify.evidence import evidence_summary
from dicom_synth.classify.facts import extract_facts
from dicom_synth.classify.labels import BRAIN, BREAST, CT, UNKNOWN
from dicom_synth.derived import MANUFACTURER, SYNTHESIZING_EQUIPMENT
from dicom_synth.domain import Task
from dicom_synth.series import LoadedSeries

SOURCE_CONTRASTS: dict[str, str] = {"t1": "brain_t1", "t2": "brain_t2", "t1c": "brain_t1c", "flair": "brain_flair"}
"""`source_contrast` value -> the brain class it names."""

DCE_SOURCES = ("breast_t1_nc", "breast_dce_pre")
"""Classes dce_phase1 synthesizes from (a non-contrast T1 of the breast)."""

CT_SOP_CLASSES = ("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2.1")  # CT, Enhanced CT

HEADER_TRUST = 0.5
"""The header expert's top label counts for a requested task when the fused class is
`unknown` (the pixel network vetoed it) and the headers give it at least this."""

_HEAD_PARTS = {"HEAD", "BRAIN", "SKULL", "ORBIT", "CEREBRUM", "NEURO", "HEADNECK"}
_OTHER_ANATOMY = (
    "knee", "breast", "mamma", "mammae", "brust", "spine", "abdomen", "pelvis", "chest", "thorax",
    "liver", "prostate", "shoulder", "hip", "ankle", "foot", "hand", "wrist", "elbow", "heart",
    "cardiac", "leg", "arm",
)
_BREAST_WORDS = ("breast", "mamma", "mammae", "brust")


class SourceContrastError(ValueError):
    """A `source_contrast` value that is not one of ours."""


def check_source_contrast(value: str | None, task: str = "auto") -> str | None:
    """None (not given) or a valid value for `task` (auto, which it turns into
    brain_contrasts, or brain_contrasts); anything else is an error saying what is valid."""
    if value is None or str(value).strip() == "":
        return None
    value = str(value).strip().lower()
    if value not in SOURCE_CONTRASTS:
        raise SourceContrastError(
            f"unknown source_contrast {value!r}; valid: {', '.join(SOURCE_CONTRASTS)}")
    if task not in ("auto", Task.BRAIN_CONTRASTS):
        raise SourceContrastError(f"source_contrast applies to task {Task.BRAIN_CONTRASTS} only, not {task}")
    return value


def model_source_label(source_contrast: str | None, series_class: str | None) -> str | None:
    """The class the brain model is told the series is: the user's word when given,
    else the classifier's."""
    return SOURCE_CONTRASTS[source_contrast] if source_contrast else series_class


# --------------------------------------------------------------------------- loop guard


def _code_values(item: Dataset) -> set[tuple[str, str]]:
    out = set()
    for code in item.get("PurposeOfReferenceCodeSequence") or []:
        out.add((str(code.get("CodeValue", "")), str(code.get("CodingSchemeDesignator", ""))))
    return out


def synthetic_reason(datasets: Sequence[Dataset]) -> str | None:
    """Why the series must not be a source (it is synthetic), or None."""
    synthesizer = SYNTHESIZING_EQUIPMENT[:2]
    for ds in datasets:
        if str(ds.get("SyntheticData", "")).strip().upper() == "YES":
            return "the series is synthetic (SyntheticData YES): a synthetic series is never synthesized from"
        for item in ds.get("ContributingEquipmentSequence") or []:
            if str(item.get("Manufacturer", "")).strip() == MANUFACTURER:
                return (f"the series was made by {MANUFACTURER} (ContributingEquipmentSequence): "
                        "a synthetic series is never synthesized from")
            if synthesizer in _code_values(item):
                return ("the series names Synthesizing Equipment (109100, DCM) in its "
                        "ContributingEquipmentSequence: a synthetic series is never synthesized from")
    return None


# --------------------------------------------------------------------------- task fit


def _is_ct(slices: Sequence[Dataset]) -> str | None:
    """None for a CT whose stored values are Hounsfield units by its headers, else why not."""
    modality = str(slices[0].get("Modality", "")).upper()
    if modality != "CT":
        return f"the series is {modality or 'of no modality'}, not CT"
    sop = str(slices[0].get("SOPClassUID", ""))
    if sop not in CT_SOP_CLASSES:
        return f"SOP class {sop} is not CT Image Storage"
    types = {str(ds.get("RescaleType", "") or "").strip().upper() for ds in slices}
    types.discard("")
    if types - {"HU"}:
        return f"RescaleType {', '.join(sorted(types))} is not HU"
    return None


def hounsfield_reason(volume: np.ndarray | None) -> str | None:
    """None when the pixels look like Hounsfield units (air near -1000, soft tissue near
    0, nothing beyond the scale), else what is wrong. Values at or below -1500 are
    taken as padding outside the scan field (scanners write -2000, -2048 or -3024)."""
    if volume is None:
        return "the series was loaded without pixels"
    values = np.asarray(volume, dtype=np.float32)
    values = values[np.isfinite(values) & (values > -1500)]
    if values.size == 0:
        return "no pixel above the padding value (-1500)"
    low, median, high = (float(v) for v in np.percentile(values, [0.5, 50, 99.5]))
    if low > -500:
        return f"no air near -1000 HU (lowest values {low:.0f}): the pixels are not Hounsfield units"
    if not -1100 <= median <= 2000 or high > 32000:
        return f"pixel values (median {median:.0f}, top {high:.0f}) are outside the Hounsfield scale"
    soft = float(np.mean((values > -300) & (values <= 300)))
    if soft < 0.005:
        return f"almost no soft tissue between -300 and 300 HU ({soft:.1%} of pixels)"
    return None


def _header_top(classification: Classification) -> tuple[str, float]:
    probs = (classification.evidence or {}).get("header_probabilities") or {}
    if not probs:
        return UNKNOWN, 0.0
    label, p = max(probs.items(), key=lambda kv: kv[1])
    return str(label), float(p)


def _anatomy(facts: dict) -> tuple[str | None, str]:
    """The body part the headers name ('head', 'breast', 'other' or None) and the words."""
    part = str(facts.get("BodyPartExamined", "")).strip().upper()
    if part:
        if part in _HEAD_PARTS:
            return "head", f"BodyPartExamined {part}"
        if part in ("BREAST", "MAMMA"):
            return "breast", f"BodyPartExamined {part}"
        return "other", f"BodyPartExamined {part}"
    text = f"{facts.get('Text', '')}{facts.get('StudyText', '')}"
    for word in _OTHER_ANATOMY:
        if f" {word} " in text:
            return ("breast" if word in _BREAST_WORDS else "other"), f"the description says {word!r}"
    return None, ""


def _this_series(classification: Classification) -> str:
    return f"this series is {evidence_summary(classification)}"


def task_fit(
    task: str,
    loaded: LoadedSeries,
    classification: Classification,
    source_contrast: str | None = None,
) -> str | None:
    """None when `task` may run on the series, else the reason it may not."""
    facts = extract_facts(loaded.slices)
    modality = str(facts.get("Modality", "")).upper()
    label = classification.label
    if task == Task.PSEUDO_MRI:
        why = _is_ct(loaded.slices) or hounsfield_reason(loaded.volume)
        if why:
            return f"task pseudo_mri needs a CT in Hounsfield units: {why}; {_this_series(classification)}"
        return None
    if task == Task.DCE_PHASE1:
        if label in DCE_SOURCES:
            return None
        head, p = _header_top(classification)
        anatomy, _ = _anatomy(facts)
        if (label == UNKNOWN and modality == "MR" and head in DCE_SOURCES and p >= HEADER_TRUST
                and anatomy in (None, "breast")):
            return None  # the headers are sure; only the pixel network was not
        return (f"task dce_phase1 needs a breast MR non-contrast T1 (class {' or '.join(DCE_SOURCES)}); "
                f"{_this_series(classification)}")
    if task == Task.BRAIN_CONTRASTS:
        return _brain_fit(facts, modality, classification, source_contrast)
    return f"unknown task {task!r}"


def _brain_fit(facts: dict, modality: str, classification: Classification,
               source_contrast: str | None) -> str | None:
    label = classification.label
    needs = "task brain_contrasts needs a brain MR (T1, T2, T1c or FLAIR)"
    if modality != "MR":
        return f"{needs}: the series is {modality or 'of no modality'}; {_this_series(classification)}"
    anatomy, words = _anatomy(facts)
    if anatomy in ("breast", "other"):
        return f"{needs}: {words}; {_this_series(classification)}"
    if label in BREAST or label in CT:
        return f"{needs}; {_this_series(classification)}"
    if facts.get("DiffusionEvidence"):
        return f"{needs}: the headers say it is diffusion-weighted; {_this_series(classification)}"
    if source_contrast is not None:
        return None  # an MR of the head, or of no stated anatomy, that the user names
    if label in BRAIN:
        return None
    return (f"{needs}, and the classifier cannot tell which contrast this series is "
            f"({evidence_summary(classification)}): pass source_contrast "
            f"({', '.join(SOURCE_CONTRASTS)}) to say what it is")
