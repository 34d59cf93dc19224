"""A job's timeline as the job page shows it: each state it entered, in order, with how
long it stayed there (the job's `timeline` holds when it last entered each state)."""

from __future__ import annotations

from dataclasses import dataclass

from dicom_synth.domain import Job, JobStatus

FLOW = ("received", "classified", "queued", "running", "exporting", "done")


@dataclass(frozen=True)
class Step:
    state: str
    entered: float
    seconds: float | None  # time spent in it; None for a final state
    current: bool  # the job is in it now (for an unfinished job: still counting)


def steps(job: Job, now: float) -> list[Step]:
    """The states the job entered, oldest first, each with its duration."""
    entered = sorted(job.timeline.items(), key=lambda item: (item[1], _rank(item[0])))
    out = []
    for i, (state, at) in enumerate(entered):
        last = i == len(entered) - 1
        if not last:
            seconds: float | None = entered[i + 1][1] - at
        else:
            seconds = None if JobStatus(state).is_final else max(0.0, now - at)
        out.append(Step(state, at, seconds, current=last and state == str(job.status)))
    return out


def total_seconds(job: Job, now: float) -> float:
    """From the first state to the final one (or to now, for an unfinished job)."""
    if not job.timeline:
        return 0.0
    end = job.updated_at if JobStatus(job.status).is_final else now
    return max(0.0, end - min(job.timeline.values()))


def _rank(state: str) -> int:
    return FLOW.index(state) if state in FLOW else len(FLOW)
