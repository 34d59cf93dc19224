"""The steps a job goes through, as plain functions over a loaded series.

Used by the Celery tasks (worker) and by the offline `dicom-synth synthesize` command,
so both run exactly the same code.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom import Dataset

from dicom_synth import metrics
from dicom_synth.classify import Classification, classify_series
from dicom_synth.classify.evidence import evidence_summary
from dicom_synth.derived import build_derived_series, write_series
from dicom_synth.domain import Task
from dicom_synth.multicontrast import Synthesizer
from dicom_synth.registry import ModelCard
from dicom_synth.series import LoadedSeries
from dicom_synth.taskfit import (
    check_source_contrast,
    model_source_label,
    synthetic_reason,
    task_fit,
)

TASK_NAMES = [t.value for t in Task]


class UnknownTaskError(ValueError):
    """The requested task name is not one of ours."""


def check_task_name(name: str) -> str:
    """`auto` or a known task name; anything else is an error listing the valid ones."""
    if name == "auto" or name in TASK_NAMES:
        return name
    raise UnknownTaskError(f"unknown task {name!r}; valid: auto, {', '.join(TASK_NAMES)}")


@dataclass(frozen=True)
class Decision:
    """What to do with a series: the task to run, or None with the reason.

    `classification` is None when the loop guard refused the series before classifying it;
    `refused` is True when what the user asked for (a task, or a source_contrast) does not
    fit the series, as opposed to a series with no route; `source_label` is the class the
    model is told the source is (the user's source_contrast when given)."""

    classification: Classification | None
    task: str | None
    reason: str | None
    refused: bool = False
    source_label: str | None = None


def decide(loaded: LoadedSeries, requested_task: str = "auto", source_contrast: str | None = None) -> Decision:
    """Refuse a synthetic series (loop guard, first), classify, pick the task — its route
    (the user-editable routing table) for `auto`, else the one asked for; a
    `source_contrast` implies brain_contrasts — and check the task fits the series."""
    check_task_name(requested_task)
    source_contrast = check_source_contrast(source_contrast, requested_task)
    asked = requested_task != "auto" or source_contrast is not None
    synthetic = synthetic_reason(loaded.slices)
    if synthetic is not None:
        return Decision(None, None, synthetic, refused=asked)
    classification = classify_series(loaded.slices, loaded.volume)
    task = str(Task.BRAIN_CONTRASTS) if source_contrast else (
        requested_task if requested_task != "auto" else classification.route)
    if task is None:
        return Decision(classification, None, f"no synthesis route for series {evidence_summary(classification)}")
    misfit = task_fit(task, loaded, classification, source_contrast)
    if misfit is not None:
        return Decision(classification, None, misfit, refused=asked)
    return Decision(classification, task, None, source_label=model_source_label(source_contrast, classification.label))


def synthesize_series(
    loaded: LoadedSeries,
    model: Synthesizer,
    card: ModelCard,
    progress: Callable[[float], None] | None = None,
    source_label: str | None = None,
    notes: Sequence[str] = (),
) -> list[list[Dataset]]:
    """Run the model on the series and build one new DICOM series per model output
    (the brain model makes one per contrast the source is not: it needs the source's class).
    Output UIDs derive from the source instances, the card's task and sha256 and the
    output's label, so the same series run twice gives the same UIDs; `notes` go into
    every output instance's ImageComments."""
    if loaded.volume is None:
        raise ValueError("series was loaded without pixels")
    with metrics.INFERENCE_SECONDS.labels(model=card.task).time():
        outputs = model.run(loaded.volume, progress=progress, source_label=source_label)
    frame_numbers = loaded.frame_numbers if any(f is not None for f in loaded.frame_numbers) else None
    return [
        build_derived_series(
            loaded.slices,
            out.pixels,
            task=card.task,
            model_sha256=card.sha256,
            output_index=index,
            label=out.label,
            model_name=card.name,
            model_version=card.version,
            modality="MR",
            source_frame_numbers=frame_numbers,
            notes=notes,
        )
        for index, out in enumerate(outputs)
    ]


def write_outputs(series: list[list[Dataset]], out_dir: Path) -> list[str]:
    """Write each output series in its own folder of `out_dir`, whole: written beside
    `out_dir` first and renamed into place, so no reader (export, result, QIDO-RS) ever
    sees a series half-written. Returns their SeriesInstanceUIDs."""
    out_dir = Path(out_dir)
    partial = out_dir.parent / f".{out_dir.name}.partial"
    uids = []
    for index, datasets in enumerate(series):
        written = partial / f"{index:02d}"
        shutil.rmtree(written, ignore_errors=True)  # a write a crash cut short
        write_series(datasets, written)
        out_dir.mkdir(parents=True, exist_ok=True)
        final = out_dir / written.name
        if final.exists():  # a task run twice: the same UIDs, written again
            shutil.rmtree(final)
        written.rename(final)
        uids.append(str(datasets[0].SeriesInstanceUID))
    shutil.rmtree(partial, ignore_errors=True)
    return uids
