"""What every family's `retrain` shares: the error that ends a retraining with what is
missing (and writes no model), the split of the export's studies by patient, the temporary
workspace, and installing the finished model (ONNX and card) into the models folder only at
the end. Every family's `retrain(export_dir, out_dir, config, run_dir, version, log)` returns
the card as written and raises NotEnoughData (writing nothing into out_dir) when the export
cannot train it."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from dicom_synth.registry import CARD_SUFFIX
from models.common.split import split_patients

SPLIT_NOTE = "by patient (hash of PatientID; models.common.split.split_patients)"  # the card's training_data split


class NotEnoughData(Exception):
    """The export cannot train this model; the message says what is missing."""


@contextmanager
def workspace(family: str, run_dir: Path | None) -> Iterator[tuple[Path, Path, float]]:
    """One retraining's temporary folder (removed at the end), its run folder (`run_dir`, or
    `run` inside the temporary folder) and its start time (for the card's build record)."""
    started = time.time()
    with tempfile.TemporaryDirectory(prefix=f"retrain-{family}-") as tmp:
        yield Path(tmp), Path(run_dir) if run_dir else Path(tmp) / "run", started


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
