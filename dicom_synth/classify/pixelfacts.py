"""Hand-made pixel facts the header rules can test: is the image blank, and for CT how
much tissue, bone and lung a slice holds (body region from Hounsfield units).

These hold on real scanners because they rest on physics (air -1000 HU, lung about
-800, bone above +300), which the phantom-trained network cannot promise.
"""

from __future__ import annotations

import numpy as np

from dicom_synth.classify.facts import Facts


def _sample(volume: np.ndarray, n: int = 5) -> np.ndarray:
    """Up to n slices spread over the middle 60 % of the volume."""
    depth = volume.shape[0]
    if depth <= n:
        return volume
    idx = np.linspace(0.2 * (depth - 1), 0.8 * (depth - 1), n).round().astype(int)
    return volume[np.unique(idx)]


def pixel_facts(volume: np.ndarray | None, facts: Facts) -> Facts:
    """Facts from the pixels (modality units). Empty when there is no usable volume."""
    out: Facts = {}
    if volume is None:
        return out
    try:
        vol = np.asarray(volume, dtype=np.float32)
        if vol.ndim == 2:
            vol = vol[None]
        if vol.ndim != 3 or vol.size == 0:
            return out
        sample = _sample(vol)
        finite = sample[np.isfinite(sample)]
        if finite.size == 0 or float(finite.max() - finite.min()) == 0.0:
            out["PixelBlank"] = True
            return out
        out["PixelBlank"] = False
        if str(facts.get("Modality", "")).upper() == "CT":
            out.update(_ct_facts(sample, facts))
    except Exception:  # pixels are evidence, never a reason to fail
        return {}
    return out


def _inside(mask: np.ndarray) -> np.ndarray:
    """Per row, everything between the first and last tissue pixel: lungs and bowel gas
    lie inside the body, room air outside it."""
    cols = np.arange(mask.shape[-1])
    any_row = mask.any(axis=-1)
    first = np.where(any_row, mask.argmax(axis=-1), mask.shape[-1])
    last = np.where(any_row, mask.shape[-1] - 1 - mask[..., ::-1].argmax(axis=-1), -1)
    return (cols >= first[..., None]) & (cols <= last[..., None])


def _ct_facts(sample: np.ndarray, facts: Facts) -> Facts:
    fov = facts.get("FieldOfViewMM")
    cols = facts.get("Columns")
    if not isinstance(fov, (int, float)) or not cols or fov <= 0:
        return {}
    pixel_area_cm2 = (float(fov) / float(cols)) ** 2 / 100.0  # type: ignore[arg-type]
    tissue = (sample > -300) & (sample < 3000)
    bone = sample > 300
    lung = (sample > -900) & (sample < -500) & _inside(tissue)
    tissue_cm2 = tissue.sum(axis=(1, 2)) * pixel_area_cm2
    bone_frac = bone.sum(axis=(1, 2)) / np.maximum(tissue.sum(axis=(1, 2)), 1)
    lung_frac = lung.sum(axis=(1, 2)) / np.maximum(tissue.sum(axis=(1, 2)) + lung.sum(axis=(1, 2)), 1)
    soft = (sample > -300) & (sample < 300)
    hu_std = [_robust_std(sample[k][soft[k]]) if soft[k].sum() > 50 else 0.0 for k in range(len(sample))]
    return {
        "TissueAreaCM2": round(float(np.median(tissue_cm2)), 1),
        "BoneFraction": round(float(np.median(bone_frac)), 3),
        "LungFraction": round(float(np.median(lung_frac)), 3),
        "LargestPartFraction": round(float(np.median([_largest_part(t) for t in tissue])), 3),
        "SoftTissueHUStd": round(float(np.median(hu_std)), 1),
    }


def _robust_std(values: np.ndarray) -> float:
    """1.4826 x median absolute deviation: the spread of the bulk, blind to a table."""
    return float(1.4826 * np.median(np.abs(values - np.median(values))))


def _largest_part(tissue: np.ndarray) -> float:
    """Width of the widest run of columns holding tissue, over all such columns: about 1
    for a trunk or a head, about 0.5 for two legs side by side."""
    cols = tissue.sum(axis=0) > 0.05 * tissue.shape[0]  # a thin table never counts
    if not cols.any():
        return 1.0
    padded = np.concatenate([[0], cols.astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(padded))
    runs = edges[1::2] - edges[::2]
    return float(runs.max() / runs.sum())
