"""What every family's `retrain` shares: the error that ends a retraining with what is
missing (and writes no model), the split of the export's studies by patient, and
installing the finished model (ONNX and card) into the models folder only at the end."""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

from dicom_synth.registry import CARD_SUFFIX
from models.common.split import split_patients


class NotEnoughData(Exception):
    """The export cannot train this model; the message says what is missing."""


def split_by_patient(studies: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """Study IDs per split from {patient: [study, ...]}: no patient in two splits."""
    try:
        patients = split_patients(studies)
    except ValueError as exc:
        raise NotEnoughData(f"too few patients with a usable study: {exc}") from None
    return {split: [s for p in ids for s in studies[p]] for split, ids in patients.items()}


def install(stage: Path, out_dir: Path, name: str) -> Path:
    """Move `<name>.onnx` and its card from the staging folder into out_dir; the card's path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    os.replace(Path(stage) / f"{name}.onnx", out_dir / f"{name}.onnx")
    card = out_dir / f"{name}{CARD_SUFFIX}"
    os.replace(Path(stage) / card.name, card)
    return card


def gather(series: Mapping[str, Sequence[Path]], folder: Path) -> Path:
    """Each series' files under folder/<name>/ (hard links, copies across file systems): the
    series a domain block is built from (`models.domain_reference --data`); the folder."""
    for name, files in series.items():
        (Path(folder) / name).mkdir(parents=True, exist_ok=True)
        for k, path in enumerate(files):
            try:
                os.link(path, Path(folder) / name / f"{k:05d}")
            except OSError:
                shutil.copyfile(path, Path(folder) / name / f"{k:05d}")
    return Path(folder)


def command(task: str, export_dir: Path, out_dir: Path, config: str, *extra: str) -> str:
    """The command line that retrains the model, for the card's `build` block."""
    return " ".join((f"python -m models retrain {task} {export_dir} --out {out_dir} --config {config}", *extra))


def serve_hint(out_dir: Path) -> str:
    return (f"serve it: SYNTH_MODELS_DIR={Path(out_dir).resolve()} make run "
            "(copy the other models' ONNX files and cards there to keep serving them)")
