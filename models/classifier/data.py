"""Phantom splits as network inputs, generated in parallel and cached under var/.

Each phantom series contributes its slices, preprocessed exactly as the service does it
(`dicom_synth.classify.pixelmodel.preprocess`), so training sees what inference sees, and
the phantom family it came from (`info["source"]`), so a whole family can be held out.
"""

from __future__ import annotations

from multiprocessing import get_context
from pathlib import Path

import numpy as np

from dicom_synth.classify.labels import LABELS
from dicom_synth.classify.pixelmodel import preprocess
from models.classifier.phantom import make_series, split_seeds

CACHE = Path(__file__).resolve().parents[2] / "var" / "classifier_cache"
N_SLICES = 3
VERSION = "9"  # bump when the phantom's pixels, the preprocessing or the cached arrays change
OWN_FAMILY = "models.classifier.phantom"  # the source of a series drawn by this package's phantom


def _one(args: tuple[str, int, str]) -> tuple[np.ndarray, int, str]:
    label, seed, split = args
    s = make_series(label, seed, n_slices=N_SLICES, split=split)
    x = preprocess(s.volume, s.headers[0].Modality == "CT")
    return x.astype(np.float16), LABELS.index(label), s.info.get("source", OWN_FAMILY)


def build_split(split: str, per_class: int, workers: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(X (M, 2, S, S) float16, y (M,), series index (M,), phantom family (M,) str) for a
    split; cached."""
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"{split}_{per_class}_{N_SLICES}_v{VERSION}.npz"
    if path.exists():
        z = np.load(path)
        return z["x"], z["y"], z["series"], z["source"]
    jobs = [(label, seed, split) for seed in split_seeds(split, per_class) for label in LABELS]
    if workers > 1:
        with get_context("fork").Pool(workers) as pool:
            results = pool.map(_one, jobs, chunksize=8)
    else:
        results = [_one(j) for j in jobs]
    xs, ys, series, sources = [], [], [], []
    for i, (x, y, source) in enumerate(results):
        xs.append(x)
        ys += [y] * len(x)
        series += [i] * len(x)
        sources += [source] * len(x)
    out = np.concatenate(xs), np.asarray(ys, np.int64), np.asarray(series, np.int64), np.asarray(sources)
    np.savez(path, x=out[0], y=out[1], series=out[2], source=out[3])
    return out
