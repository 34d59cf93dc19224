"""How much one instance, one series and one upload may be: the checks both doors share.

Each check reads header values only (never pixels), so an instance that would need
gigabytes to decode is refused before anything is decoded. The limits themselves are
settings (`SYNTH_MAX_*`); a refusal names the setting so an operator knows what to raise.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dicom_synth.settings import Settings


class OverLimit(ValueError):
    """The data is well-formed but more than the service is set to take (HTTP 413,
    DICOM 0xA700); the message names the limit."""


@dataclass(frozen=True)
class Limits:
    max_upload_bytes: int
    max_series_instances: int
    max_instance_pixels: int

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(settings.max_upload_bytes, settings.max_series_instances, settings.max_instance_pixels)


def _count(values: Mapping[str, Any] | Any, keyword: str) -> int:
    v = values.get(keyword)
    if isinstance(v, list | tuple):  # a multi-valued count is malformed; take the largest
        v = max((x for x in v if x is not None), default=None)
    try:
        return max(int(v), 1) if v not in (None, "") else 1
    except (TypeError, ValueError):
        return 1


def instance_pixels(values: Mapping[str, Any] | Any) -> int:
    """Rows x Columns x NumberOfFrames x SamplesPerPixel from header values (a pydicom
    Dataset or the store's decoded values); absent or unreadable counts are 1."""
    return (_count(values, "Rows") * _count(values, "Columns") * _count(values, "NumberOfFrames")
            * _count(values, "SamplesPerPixel"))


def check_instance_pixels(values: Mapping[str, Any] | Any, max_pixels: int) -> None:
    """`OverLimit` past `max_pixels` (the message fits a DICOM ErrorComment)."""
    n = instance_pixels(values)
    if n > max_pixels:
        raise OverLimit(f"{n} pixels over SYNTH_MAX_INSTANCE_PIXELS={max_pixels}")


def series_instances_refusal(count: int, max_instances: int) -> str:
    """Short enough for a DICOM ErrorComment (64 characters)."""
    return f"series full: {count} of SYNTH_MAX_SERIES_INSTANCES={max_instances}"
