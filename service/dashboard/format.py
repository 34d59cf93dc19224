"""How the dashboard writes times, durations, sizes and origins (Jinja filters)."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from typing import Any

LONG_LIST = 6  # a list longer than this is shown by its length


def when(epoch: float | None) -> str:
    """Local time, to the second."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch)) if epoch else "—"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def size(n: int | None) -> str:
    if n is None:
        return "—"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def percent(fraction: float | None) -> str:
    return f"{100 * (fraction or 0):.0f}%"


def origin(text: str | None) -> str:
    """`dicom:AE` as the calling AE title; anything else as it is (http)."""
    kind, _, ae = (text or "").partition(":")
    return ae if kind == "dicom" and ae else (text or "—")


def show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list | tuple):
        if len(value) > LONG_LIST:
            return f"[{len(value)} values]"
        return ", ".join(show(v) for v in value)
    return "—" if value is None else str(value)


def flatten(value: Any, prefix: str = "") -> Iterator[tuple[str, str]]:
    """(path, shown value) for every leaf of nested mappings."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield from flatten(item, f"{prefix} › {key}" if prefix else str(key))
    else:
        yield prefix, show(value)


FILTERS = {"when": when, "duration": duration, "size": size, "percent": percent, "origin": origin}
