"""The job state machine: the one table of allowed transitions, the one function that
moves a job (`advance`), and the one recovery that runs at every process start (`resume`).

    received   → classified | failed
    classified → classified (a classify task run twice) | queued | skipped (no route) | failed
    queued     → running | failed
    running    → running (a synthesize task run twice) | queued (resume) | exporting | done (no PACS)
                 | skipped (domain guard) | failed
    exporting  → done | failed
    done       → exporting (resend)
    failed     → exporting (resend)
    skipped    → (nothing)

The store (`dicom_synth.jobstore`) checks every status change against this table and
refuses any other. Tasks may run twice (late acknowledgement): each says which states
it expects the job in (`only_from`); a job found elsewhere was moved on by the other
copy, and the move is a no-op rather than an error. Nothing else in the code writes a
job's status (tests/test_jobstate.py greps for it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping
from dataclasses import fields as dataclass_fields
from typing import TYPE_CHECKING, Any

from dicom_synth.domain import Job, JobStatus
from dicom_synth.queueconf import task_for_status

if TYPE_CHECKING:
    from dicom_synth.jobstore import JobStore

log = logging.getLogger(__name__)

S = JobStatus
INITIAL = S.RECEIVED
TRANSITIONS: Mapping[JobStatus, frozenset[JobStatus]] = {
    S.RECEIVED: frozenset({S.CLASSIFIED, S.FAILED}),
    S.CLASSIFIED: frozenset({S.CLASSIFIED, S.QUEUED, S.SKIPPED, S.FAILED}),
    S.QUEUED: frozenset({S.RUNNING, S.FAILED}),
    S.RUNNING: frozenset({S.RUNNING, S.QUEUED, S.EXPORTING, S.DONE, S.SKIPPED, S.FAILED}),
    S.EXPORTING: frozenset({S.DONE, S.FAILED}),
    S.DONE: frozenset({S.EXPORTING}),
    S.FAILED: frozenset({S.EXPORTING}),
    S.SKIPPED: frozenset(),
}
NOT_FINAL = frozenset(s for s in JobStatus if not s.is_final)
JOB_FIELDS = frozenset(f.name for f in dataclass_fields(Job))


class IllegalTransition(ValueError):
    """A status change the table does not allow."""

    def __init__(self, job_id: str, before: JobStatus, after: JobStatus) -> None:
        allowed = ", ".join(sorted(TRANSITIONS[before])) or "nothing (final)"
        super().__init__(f"job {job_id}: {before} → {after} is not allowed (from {before}: {allowed})")
        self.job_id, self.before, self.after = job_id, before, after


def check_transition(job_id: str, before: JobStatus, after: JobStatus) -> None:
    """Raise IllegalTransition unless the table allows before → after (the store calls this)."""
    if after not in TRANSITIONS[JobStatus(before)]:
        raise IllegalTransition(job_id, JobStatus(before), JobStatus(after))


def check_fields(changes: Mapping[str, Any]) -> None:
    """Raise ValueError for a name that is no field of a Job."""
    unknown = set(changes) - JOB_FIELDS
    if unknown:
        raise ValueError(f"unknown job fields: {sorted(unknown)}")


def new_job(**fields: Any) -> Job:
    """A job in the initial state, for `JobStore.create` (which accepts no other)."""
    return Job(status=INITIAL, **fields)


def advance(
    store: JobStore,
    job_id: str,
    to: JobStatus,
    *,
    only_from: Collection[JobStatus] | None = None,
    **fields: Any,
) -> Job | None:
    """Move the job to `to`, writing `fields` with it, in one locked transaction.

    With `only_from`, a job found in another state is left as it is and None is returned
    (the other copy of a task that ran twice got there first); without it, or when the
    job is in `only_from` but the table has no such arrow, IllegalTransition is raised.
    """
    to = JobStatus(to)
    check_fields(fields)
    if "status" in fields:
        raise TypeError("the status is `to`, not a field")

    def move(job: Job) -> bool:
        if only_from is not None and job.status not in only_from:
            return False
        check_transition(job_id, job.status, to)
        job.status = to
        for key, value in fields.items():
            setattr(job, key, value)
        return True

    job, moved = store.mutate(job_id, move)
    if not moved:
        log.info("job %s is %s, not %s: leaving it (a duplicate task)", job_id, job.status,
                 "/".join(sorted(only_from or ())))
        return None
    return job


def fail(store: JobStore, job_id: str, reason: str) -> Job | None:
    """End an unfinished job `failed` with the reason (a final job is left as it is)."""
    return advance(store, job_id, S.FAILED, only_from=NOT_FINAL, error=reason)


def fail_from_task(store: JobStore, job_id: str | None, exc: BaseException) -> None:
    """What every Celery task's `on_failure` does: the job ends failed with the reason."""
    if job_id:
        fail(store, job_id, f"{type(exc).__name__}: {exc}")


def resume(
    store: JobStore,
    send_task: Callable[..., Any],
    *,
    claimed_by: str | None = None,
) -> list[tuple[str, str]]:
    """Put unfinished jobs back on their queues; runs at every process start.

    The runner (one machine, before any worker starts) resumes every unfinished job; a
    worker that comes back resumes those it had claimed (`claimed_by`, its node name),
    whose messages Redis would redeliver only after the visibility timeout. A `running`
    job goes back to `queued`. Idempotent: tasks check the job's state, so a job that is
    still on its queue and is sent again runs once to completion and the copy is a no-op.
    Returns (job_id, task name) for each job sent.
    """
    sent: list[tuple[str, str]] = []
    for job in store.unfinished():
        if claimed_by is not None and job.claimed_by != claimed_by:
            continue
        if job.status == S.RUNNING:
            if advance(store, job.job_id, S.QUEUED, only_from={S.RUNNING}) is None:
                continue  # finished meanwhile
        task = task_for_status(S.QUEUED if job.status == S.RUNNING else job.status)
        if task is None:
            continue
        log.warning("resuming job %s (%s) with %s", job.job_id, job.status, task)
        send_task(task, args=[job.job_id])
        sent.append((job.job_id, task))
    return sent
