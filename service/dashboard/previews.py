"""Previews of a job's input and of each output series at the same slice positions,
windowed and rendered to PNG on the server.

The rows are taken at a quarter, half and three quarters through the input (sorted along
the slice normal); each output series shows, on every row, its slice nearest to that
input slice's position along the normal (outputs keep their source slice's geometry, so
it is the same position), or the slice at the same fraction through the series when a
series has no geometry. Each image is windowed by its own series' window (Window Center
and Width of the slice), else by the 0.5th..99.5th percentile of its pixels.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom import Dataset, dcmread
from pydicom.multival import MultiValue

from dicom_synth.domain import Job
from dicom_synth.series import LoadedSeries, SeriesReadError, load_series, slice_position
from dicom_synth.settings import Settings, job_input_dir, job_output_dir

FRACTIONS = (0.25, 0.5, 0.75)
INPUT = "input"


@dataclass(frozen=True, eq=False)  # hashed by identity: the grid is cached, so are its PNGs
class SliceRef:
    path: Path
    frame: int | None  # 1-based frame of an enhanced (multi-frame) file
    header: Dataset
    position: float | None  # along the slice normal, mm
    index: int  # in its series, sorted along the normal


@dataclass(frozen=True)
class PreviewSeries:
    key: str  # "input", or the output's folder name ("00", "01", ...)
    label: str  # its SeriesDescription
    series_uid: str
    slices: tuple[SliceRef, ...]  # one per row


@dataclass(frozen=True)
class Previews:
    positions: tuple[float | None, ...]  # of the input's slice on each row
    series: tuple[PreviewSeries, ...]  # the input first, then each output

    def find(self, key: str) -> PreviewSeries | None:
        return next((s for s in self.series if s.key == key), None)


def row_indices(n: int) -> list[int]:
    """The input slices the rows show (fewer rows for a series of one or two slices)."""
    return sorted({round((n - 1) * f) for f in FRACTIONS}) if n else []


def _ref(series: LoadedSeries, i: int) -> SliceRef:
    return SliceRef(series.files[i], series.frame_numbers[i], series.slices[i], slice_position(series.slices[i]), i)


def _matching(series: LoadedSeries, source: LoadedSeries, rows: list[int]) -> tuple[SliceRef, ...]:
    """The slice of `series` on each row: nearest to the source slice's position."""
    positions = [slice_position(s) for s in series.slices]
    out = []
    for i in rows:
        wanted = slice_position(source.slices[i])
        if wanted is not None and all(p is not None for p in positions):
            j = int(np.argmin([abs(p - wanted) for p in positions]))  # type: ignore[operator]
        else:
            j = round(i / max(1, len(source.slices) - 1) * (len(series.slices) - 1))
        out.append(_ref(series, j))
    return tuple(out)


def _load(folder: Path) -> LoadedSeries | None:
    files = sorted(p for p in folder.glob("*") if p.is_file()) if folder.is_dir() else []
    try:
        return load_series(files, pixels=False) if files else None
    except (SeriesReadError, OSError, ValueError):
        return None


def _label(series: LoadedSeries, fallback: str) -> str:
    return str(series.slices[0].get("SeriesDescription", "") or fallback)


@lru_cache(maxsize=64)
def _previews(input_dir: Path, output_dir: Path, stamp: float) -> Previews | None:  # noqa: ARG001 (cache key)
    source = _load(input_dir)
    if source is None:
        return None
    rows = row_indices(len(source.slices))
    series = [PreviewSeries(INPUT, _label(source, "input"), source.series_instance_uid,
                            tuple(_ref(source, i) for i in rows))]
    for folder in sorted(output_dir.iterdir()) if output_dir.is_dir() else []:
        output = _load(folder)
        if output is not None:
            series.append(PreviewSeries(folder.name, _label(output, folder.name), output.series_instance_uid,
                                        _matching(output, source, rows)))
    return Previews(tuple(slice_position(source.slices[i]) for i in rows), tuple(series))


def previews(settings: Settings, job: Job) -> Previews | None:
    """The job's preview grid (None when its input is gone or unreadable)."""
    if job.purged:
        return None
    return _previews(job_input_dir(settings, job.job_id), job_output_dir(settings, job.job_id), job.updated_at)


def _first(value) -> float | None:
    """The first of a DS value that may hold several (Window Center: one per window)."""
    if isinstance(value, MultiValue | list | tuple):
        value = value[0] if len(value) else None
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def window(header: Dataset, values: np.ndarray) -> tuple[float, float]:
    """(center, width): the slice's own window, else its 0.5..99.5th percentiles."""
    center, width = _first(header.get("WindowCenter")), _first(header.get("WindowWidth"))
    if center is not None and width is not None and width > 0:
        return center, width
    lo, hi = (float(v) for v in np.percentile(values, (0.5, 99.5)))
    return (lo + hi) / 2, max(hi - lo, 1e-6)


def slice_values(ref: SliceRef) -> np.ndarray:
    """The slice's pixels in modality units (rescale applied), float32."""
    ds = dcmread(ref.path)
    pixels = ds.pixel_array
    if ref.frame is not None:
        pixels = pixels[ref.frame - 1]
    slope = float(ref.header.get("RescaleSlope", 1) or 1)
    intercept = float(ref.header.get("RescaleIntercept", 0) or 0)
    return pixels.astype(np.float32) * slope + intercept


@lru_cache(maxsize=128)
def _png(ref: SliceRef, mtime: float) -> bytes:  # noqa: ARG001 (cache key)
    values = slice_values(ref)
    center, width = window(ref.header, values)
    grey = np.clip((values - (center - width / 2)) / width, 0.0, 1.0)
    if str(ref.header.get("PhotometricInterpretation", "")) == "MONOCHROME1":
        grey = 1.0 - grey
    buf = io.BytesIO()
    Image.fromarray(np.round(grey * 255).astype(np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()


def render_png(ref: SliceRef) -> bytes:
    """The slice, windowed, as a greyscale PNG at its own matrix size."""
    return _png(ref, ref.path.stat().st_mtime)
