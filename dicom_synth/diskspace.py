"""The free-space watermark (SYNTH_MIN_FREE_GB): below it the listener answers C-STOREs
0xA700 and the gateway answers uploads 507, while the disk still has room for the jobs
that are already running and for their outputs."""

from __future__ import annotations

import os
from pathlib import Path

GB = 1 << 30


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged writer may still use on `path`'s file system (its nearest
    existing ancestor, for a directory not made yet)."""
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def low_disk_reason(path: Path, min_free_gb: float) -> str | None:
    """Why new data is refused (free space under the watermark), or None."""
    if min_free_gb <= 0:
        return None
    free = free_bytes(path)
    if free >= min_free_gb * GB:
        return None
    return f"free space {free / GB:.3g} GB is below SYNTH_MIN_FREE_GB={min_free_gb:g}"
