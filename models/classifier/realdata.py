"""A hospital's own labelled series as training input for the pixel classifier.

Layout: one folder per class name under a root, DICOM files of any name and nesting below
it (several series per folder are fine; each series is one example):

    labelled/breast_t2/<anything>/*.dcm
    labelled/brain_flair/...
    labelled/unknown/...          # knees, scouts, maps: what must not be routed

Every series is preprocessed exactly as the service does it (`pixelmodel.preprocess`).
A series goes to validation when its SeriesInstanceUID hashes into the `val_share`, so the
split is stable when folders are added to.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dicom_synth.classify.labels import LABELS
from dicom_synth.classify.pixelmodel import preprocess
from dicom_synth.series import LoadedSeries, SeriesFiles, group_series, load_series


@dataclass
class LabelledSet:
    """Network inputs per split: x (M, 2, S, S) float16, y (M,), series (M,)."""

    train: tuple[np.ndarray, np.ndarray, np.ndarray]
    val: tuple[np.ndarray, np.ndarray, np.ndarray]
    counts: dict[str, int] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)


def _is_val(series_uid: str, val_share: float) -> bool:
    h = int(hashlib.sha256(series_uid.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return h < val_share


def _stack(items: list[tuple[np.ndarray, int]], first_series: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not items:
        return (np.zeros((0, 2, 1, 1), np.float16), np.zeros(0, np.int64), np.zeros(0, np.int64))
    xs, ys, ss = [], [], []
    for i, (x, y) in enumerate(items):
        xs.append(x)
        ys += [y] * len(x)
        ss += [first_series + i] * len(x)
    return np.concatenate(xs), np.asarray(ys, np.int64), np.asarray(ss, np.int64)


def read_input(group: SeriesFiles) -> tuple[LoadedSeries, np.ndarray]:
    """One grouped series (`group_series`) loaded with its pixels, and the network's float16
    input from it, preprocessed as the service does it; raises what the reading raises."""
    loaded = load_series(group.files, pixels=True)
    return loaded, preprocess(loaded.volume, group.modality.upper() == "CT").astype(np.float16)


def load_labelled_folder(root: Path, val_share: float = 0.2, series_offset: int = 10_000_000) -> LabelledSet:
    """Read root/<label>/...; unknown folder names are an error that lists the classes."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no such folder: {root}")
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    wrong = [p.name for p in folders if p.name not in LABELS]
    if wrong:
        raise ValueError(f"folders {wrong} under {root} are not class names; valid: {', '.join(LABELS)}")
    train: list[tuple[np.ndarray, int]] = []
    val: list[tuple[np.ndarray, int]] = []
    counts: dict[str, int] = {}
    skipped: list[str] = []
    for folder in folders:
        y = LABELS.index(folder.name)
        for group in group_series([folder]):
            try:
                _, x = read_input(group)
            except Exception as exc:  # no pixels, undecodable: say so, keep going
                skipped.append(f"{folder.name}/{group.series_instance_uid}: {exc}")
                continue
            (val if _is_val(group.series_instance_uid, val_share) else train).append((x, y))
            counts[folder.name] = counts.get(folder.name, 0) + 1
    if not counts:
        raise ValueError(f"no readable image series under {root}")
    return LabelledSet(_stack(train, series_offset), _stack(val, series_offset + len(train)), counts, skipped)
