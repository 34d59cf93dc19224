"""DWI b-values from headers: the standard tag first, then each vendor's private tag.

Seed 001 sorted DWI-low vs DWI-high by a program reading the headers (100 % agreement
with radiologists); this is that program. Order of sources, per slice:
(0018,9087) DiffusionBValue; Siemens (0019,100C); GE (0043,1039) first value modulo
100000 (GE writes it on every MR image, so it counts only with other diffusion
evidence); Philips (2001,1003). Values below 1 are 0 (Philips codes repeated b0 as
0.001, 0.002 ...).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pydicom import Dataset
from pydicom.tag import Tag

_SIEMENS = (Tag(0x0019, 0x100C), Tag(0x0019, 0x0010), "SIEMENS MR HEADER")
_GE = (Tag(0x0043, 0x1039), Tag(0x0043, 0x0010), "GEMS_PARM_01")
_PHILIPS = (Tag(0x2001, 0x1003), Tag(0x2001, 0x0010), "PHILIPS IMAGING DD 001")
_SIEMENS_SEQNAME = re.compile(r"ep_b(\d+)", re.IGNORECASE)


@dataclass(frozen=True)
class BValue:
    """One slice's b-value and where it came from (`standard`, `siemens`, `ge`, ...)."""

    value: float
    source: str
    needs_evidence: bool = False  # true for GE: the tag alone does not mean diffusion


def _numbers(raw: object) -> list[float]:
    """Numbers in a DICOM value of any VR, including undecoded UN bytes."""
    if raw is None:
        return []
    if isinstance(raw, bytes):
        raw = raw.decode("latin-1", errors="ignore")
    if isinstance(raw, str):
        return [float(x) for x in re.findall(r"[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?", raw)]
    if isinstance(raw, (list, tuple)) or type(raw).__name__ == "MultiValue":
        out: list[float] = []
        for item in raw:  # type: ignore[union-attr]
            out.extend(_numbers(item))
        return out
    try:
        return [float(raw)]  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return []


def _private(ds: Dataset, spec: tuple) -> list[float] | None:
    tag, creator_tag, creator = spec
    if tag not in ds:
        return None
    if creator_tag in ds:  # a different creator owns this block: not the vendor's tag
        owner = str(ds[creator_tag].value or "").strip().upper()
        if owner and owner != creator:
            return None
    try:
        return _numbers(ds[tag].value)
    except Exception:
        return None


def _clean(b: float) -> float:
    return 0.0 if b < 1 else round(b, 3)


def _standard(ds: Dataset) -> float | None:
    value = ds.get("DiffusionBValue")
    if value is None:
        for seq_kw in ("MRDiffusionSequence",):
            seq = ds.get(seq_kw)
            if seq:
                value = seq[0].get("DiffusionBValue")
    nums = _numbers(value)
    return nums[0] if nums else None


def slice_bvalue(ds: Dataset) -> BValue | None:
    """The b-value of one slice header, or None when no source gives one. Never raises."""
    try:
        b = _standard(ds)
        if b is not None:
            return BValue(_clean(b), "standard")
        nums = _private(ds, _SIEMENS)
        if nums:
            return BValue(_clean(nums[0]), "siemens")
        match = _SIEMENS_SEQNAME.search(str(ds.get("SequenceName", "") or ""))
        if match:
            return BValue(_clean(float(match.group(1))), "siemens_sequence_name")
        nums = _private(ds, _GE)
        if nums:
            return BValue(_clean(nums[0] % 100000), "ge", needs_evidence=True)
        nums = _private(ds, _PHILIPS)
        if nums:
            return BValue(_clean(nums[0]), "philips")
    except Exception:
        return None
    return None


def series_bvalues(slices: list[Dataset], diffusion_evidence: bool) -> tuple[list[float], list[str]]:
    """Sorted distinct b-values of a series and their sources.

    GE values count only when `diffusion_evidence` (ImageType DIFFUSION, EPI with a
    diffusion description, ...) is true, because GE writes the tag on every MR image.
    """
    values: set[float] = set()
    sources: set[str] = set()
    for ds in slices:
        bv = slice_bvalue(ds)
        if bv is None or (bv.needs_evidence and not diffusion_evidence):
            continue
        values.add(bv.value)
        sources.add(bv.source)
    return sorted(values), sorted(sources)
