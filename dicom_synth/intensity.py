"""Intensity conventions shared by training and inference, so both use one definition.

Input: each slice is min-max scaled to [-1, 1] on its own (seed 000's preprocessing).
Output: the network's [-1, 1] becomes stored pixel values by a fixed linear map,
    stored = (clip(o, -1, 1) + 1) / 2 · stored_max.
Per-slice scaling throws away absolute signal, and a post-contrast image has no absolute
scale a non-contrast input could predict anyway, so the output is *relative*: in every
slice the brightest enhancing structure sits near stored_max and air near 0. The model
card states stored_max and a display window; viewers should not read the numbers as
signal intensities comparable with a real acquisition.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

PER_SLICE_MINMAX = "per_slice_minmax"
LINEAR_FROM_UNIT = "linear_from_unit"
DEFAULT_STORED_MAX = 4095.0


def normalise_slices(volume: np.ndarray, lo: float = -1.0, hi: float = 1.0) -> np.ndarray:
    """Per-slice min-max scaling of an (N, H, W) or (H, W) array to [lo, hi]; a constant
    slice maps to lo (nothing to enhance)."""
    v = np.asarray(volume, dtype=np.float32)
    squeeze = v.ndim == 2
    if squeeze:
        v = v[None]
    mn = v.min(axis=(1, 2), keepdims=True)
    span = v.max(axis=(1, 2), keepdims=True) - mn
    unit = np.where(span > 0, (v - mn) / np.where(span > 0, span, 1.0), 0.0)
    out = (lo + (hi - lo) * unit).astype(np.float32)
    return out[0] if squeeze else out


def normalise(volume: np.ndarray, spec: Mapping[str, Any]) -> np.ndarray:
    """Apply the normalisation a model card states."""
    kind = spec.get("kind")
    if kind != PER_SLICE_MINMAX:
        raise ValueError(f"unsupported normalisation {kind!r}; known: {PER_SLICE_MINMAX}")
    lo, hi = spec.get("range", (-1.0, 1.0))
    return normalise_slices(volume, float(lo), float(hi))


def to_stored(output: np.ndarray, mapping: Mapping[str, Any]) -> np.ndarray:
    """The network output in [-1, 1] to stored pixel units (float32, >= 0, not yet rounded)."""
    kind = mapping.get("kind")
    if kind != LINEAR_FROM_UNIT:
        raise ValueError(f"unsupported output mapping {kind!r}; known: {LINEAR_FROM_UNIT}")
    lo, hi = mapping.get("unit_range", (-1.0, 1.0))
    stored_max = float(mapping.get("stored_max", DEFAULT_STORED_MAX))
    o = np.clip(np.asarray(output, dtype=np.float32), lo, hi)
    return ((o - lo) / (hi - lo) * stored_max).astype(np.float32)


def from_stored(stored: np.ndarray, mapping: Mapping[str, Any]) -> np.ndarray:
    """Inverse of `to_stored` (for evaluation of written series)."""
    lo, hi = mapping.get("unit_range", (-1.0, 1.0))
    stored_max = float(mapping.get("stored_max", DEFAULT_STORED_MAX))
    return (np.asarray(stored, np.float32) / stored_max * (hi - lo) + lo).astype(np.float32)


def default_output_mapping(stored_max: float = DEFAULT_STORED_MAX) -> dict[str, Any]:
    """The mapping the DCE cards use, with a display window for the DICOM builder."""
    return {
        "kind": LINEAR_FROM_UNIT,
        "unit_range": [-1.0, 1.0],
        "stored_max": stored_max,
        "bits_stored": 12,
        "window_center": round(stored_max * 0.35),
        "window_width": round(stored_max * 0.7),
        "meaning": "relative intensity per slice: (o+1)/2*stored_max; not absolute signal",
    }
