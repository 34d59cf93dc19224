"""The steps a job goes through, as plain functions over a loaded series.

Used by the Celery tasks (worker) and by the offline `dicom-synth synthesize` command,
so both run exactly the same code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydicom import Dataset

from dicom_synth.classify import Classification, classify_series
from dicom_synth.derived import build_derived_series, write_series
from dicom_synth.domain import Task
from dicom_synth.multicontrast import Synthesizer
from dicom_synth.registry import ModelCard
from dicom_synth.series import LoadedSeries

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
    """What to do with a series: the task to run, or None with the reason."""

    classification: Classification
    task: str | None
    reason: str | None


def decide(loaded: LoadedSeries, requested_task: str = "auto") -> Decision:
    """Classify the series and pick its task: its route (from the user-editable routing
    table) for `auto`, else the one asked for."""
    check_task_name(requested_task)
    classification = classify_series(loaded.slices, loaded.volume)
    if requested_task != "auto":
        return Decision(classification, requested_task, None)
    task = classification.route
    if task is None:
        reason = (
            f"no synthesis route for series class {classification.label!r} "
            f"(confidence {classification.confidence:.2f})"
        )
        return Decision(classification, None, reason)
    return Decision(classification, task, None)


def synthesize_series(
    loaded: LoadedSeries,
    model: Synthesizer,
    card: ModelCard,
    job_id: str,
    progress: Callable[[float], None] | None = None,
    source_label: str | None = None,
) -> list[list[Dataset]]:
    """Run the model on the series and build one new DICOM series per model output
    (the brain model makes one per contrast the source is not: it needs the source's class)."""
    if loaded.volume is None:
        raise ValueError("series was loaded without pixels")
    outputs = model.run(loaded.volume, progress=progress, source_label=source_label)
    frame_numbers = loaded.frame_numbers if any(f is not None for f in loaded.frame_numbers) else None
    return [
        build_derived_series(
            loaded.slices,
            out.pixels,
            job_id=job_id,
            output_index=index,
            label=out.label,
            model_name=card.name,
            model_version=card.version,
            modality="MR",
            source_frame_numbers=frame_numbers,
        )
        for index, out in enumerate(outputs)
    ]


def write_outputs(series: list[list[Dataset]], out_dir: Path) -> list[str]:
    """Write each output series in its own folder; returns their SeriesInstanceUIDs."""
    uids = []
    for index, datasets in enumerate(series):
        write_series(datasets, out_dir / f"{index:02d}")
        uids.append(str(datasets[0].SeriesInstanceUID))
    return uids
