"""The job state machine: the one table of allowed transitions, the one function that
moves a job (`advance`), and the one recovery that runs at every process start (`resume`).

    received   → classified | failed
    classified → classified (a classify task run twice) | queued | skipped (no route) | failed
    queued     → running | failed
    running    → running (a synthesize task run twice) | queued (resume) | exporting | done (no PACS)
                 | skipped (domain guard) | failed
    exporting  → done | failed | skipped (superseded: never exported)
    done       → exporting (resend)
    failed     → exporting (resend)
    skipped    → (nothing)

The store (`dicom_synth.jobstore`) checks every status change against this table and
refuses any other. Tasks may run twice (late acknowledgement): each says which states
it expects the job in (`only_from`); a job found elsewhere was moved on by the other
copy, and the move is a no-op rather than an error. Nothing else in the code writes a
job's status (tests/test_jobstate.py greps for it).

Poison jobs: every task start is counted per job and step (`begin_attempt`), and the
count is cleared when the task returns or raises (`end_attempt`, from the tasks'
`after_return`). A count still standing means a start that killed its worker; after
`task_max_attempts` of them the job ends `failed` with the reason instead of being
started or resumed again.

Stuck jobs: a job that nothing changed for longer than its step's deadline (its worker
died and never came back under the same name, a message lost) is requeued by
`requeue_stuck`, which the runner calls at start and periodically.
"""

from __future__ import annotations

import logging
import time
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
    S.EXPORTING: frozenset({S.DONE, S.FAILED, S.SKIPPED}),
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


def mark_purged(store: JobStore, job_id: str, reason: str, *, at: float, seen_updated_at: float) -> Job | None:
    """Say the job's files were purged (retention): a field, not a status. Only a final job
    unchanged since `seen_updated_at` is marked (a resend meanwhile keeps its files); None otherwise."""

    def mark(job: Job) -> bool:
        if job.purged or not job.status.is_final or job.updated_at != seen_updated_at:
            return False
        job.purged = {"at": at, "reason": reason}
        return True

    job, marked = store.mutate(job_id, mark)
    return job if marked else None


def fail_from_task(store: JobStore, job_id: str | None, exc: BaseException) -> None:
    """What every Celery task's `on_failure` does: the job ends failed with the reason."""
    if job_id:
        fail(store, job_id, f"{type(exc).__name__}: {exc}")


def max_attempts() -> int:
    """Unfinished starts of one step for one job before the job is failed as poison."""
    from dicom_synth.settings import get_settings

    return get_settings().task_max_attempts


def poison_reason(step: str, starts: int) -> str:
    return (f"{step} was started {starts} times for this job and never finished (each start killed "
            f"its worker): not retried")


def superseded_reason(job: Job) -> str:
    return f"superseded by job {job.superseded_by}: not exported"


def resend_starts_new_job(job: Job) -> bool:
    """Whether a DICOM re-send of a series whose last job is `job` (and that brings no new
    instance) makes a new job: only when that job failed."""
    return job.status == S.FAILED


def begin_attempt(
    store: JobStore,
    job_id: str,
    step: str,
    *,
    only_from: Collection[JobStatus],
    to: JobStatus | None = None,
    limit: int | None = None,
    **fields: Any,
) -> Job | None:
    """Count a start of `step` (a task name) for the job, moving it to `to` (if given) and
    writing `fields`, in one transaction. Returns the job when the step may run; None when
    the job is not in `only_from` (a duplicate task), or when `limit` starts of this step
    never finished: the job then ends failed with the reason (a poison job)."""
    limit = max_attempts() if limit is None else limit
    check_fields(fields)

    def count(job: Job) -> str | bool:
        if job.status not in only_from:
            return False
        starts = job.attempts.get(step, 0)
        if starts >= limit:
            check_transition(job_id, job.status, S.FAILED)
            job.status, job.error = S.FAILED, poison_reason(step, starts)
            return "poison"
        if to is not None:
            check_transition(job_id, job.status, JobStatus(to))
            job.status = JobStatus(to)
        job.attempts = {**job.attempts, step: starts + 1}
        for key, value in fields.items():
            setattr(job, key, value)
        return True

    job, result = store.mutate(job_id, count)
    if result == "poison":
        log.error("job %s: %s", job_id, job.error)
        return None
    if result is False:
        log.info("job %s is %s: not starting %s (a duplicate task)", job_id, job.status, step)
        return None
    return job


def end_attempt(store: JobStore, job_id: str | None, step: str) -> None:
    """The step returned or raised (it did not kill its worker): clear its count."""
    from dicom_synth.jobstore import JobNotFound

    if not job_id:
        return
    try:
        store.mutate(job_id, lambda job: job.attempts.pop(step, None) is not None)
    except JobNotFound:
        pass


def resume(
    store: JobStore,
    send_task: Callable[..., Any],
    *,
    claimed_by: str | None = None,
    limit: int | None = None,
) -> list[tuple[str, str]]:
    """Put unfinished jobs back on their queues; runs at every process start.

    The runner (one machine, before any worker starts) resumes every unfinished job; a
    worker that comes back resumes those it had claimed (`claimed_by`, its node name),
    whose messages Redis would redeliver only after the visibility timeout. A `running`
    job goes back to `queued`. Idempotent: tasks check the job's state, so a job that is
    still on its queue and is sent again runs once to completion and the copy is a no-op.
    A job whose step already had `limit` unfinished starts (poison) ends failed instead.
    Returns (job_id, task name) for each job sent.
    """
    jobs = [job for job in store.unfinished() if claimed_by is None or job.claimed_by == claimed_by]
    return _requeue(store, send_task, jobs, limit)


def requeue_stuck(
    store: JobStore,
    send_task: Callable[..., Any],
    deadlines: Mapping[str, float],
    *,
    now: float | None = None,
    limit: int | None = None,
) -> list[tuple[str, str]]:
    """Put back on their queues the unfinished jobs that nothing changed for longer than
    their step's deadline (`deadlines`: task name → seconds), e.g. an export whose worker
    was killed and came back under another name. Runs at start and periodically.

    Idempotent: a job is sent only if it is still as it was read (same state, same last
    change), and sending it counts as a change, so the next round waits a whole deadline
    again; the task checks the job's state, so a copy of a message still queued is a no-op.
    """
    now = time.time() if now is None else now
    stuck = []
    for job in store.unfinished():
        deadline = deadlines.get(task_for_status(job.status) or "")
        if deadline is None or now - job.updated_at <= deadline:
            continue
        seen = (job.status, job.updated_at)
        if store.mutate(job.job_id, lambda j, seen=seen: (j.status, j.updated_at) == seen)[1]:
            log.warning("job %s is %s with no change for %.0f s (deadline %.0f s): requeueing it",
                        job.job_id, job.status, now - job.updated_at, deadline)
            stuck.append(job)
    return _requeue(store, send_task, stuck, limit)


def _requeue(
    store: JobStore, send_task: Callable[..., Any], jobs: list[Job], limit: int | None,
) -> list[tuple[str, str]]:
    """Send each job the task that moves it on (a `running` one goes back to `queued`
    first); a job whose step already had `limit` unfinished starts ends failed instead."""
    limit = max_attempts() if limit is None else limit
    sent: list[tuple[str, str]] = []
    for job in jobs:
        starts = job.attempts.get(task_for_status(job.status) or "", 0)
        if starts >= limit:
            fail(store, job.job_id, poison_reason(task_for_status(job.status) or "", starts))
            log.error("job %s not resumed: %s", job.job_id, poison_reason(task_for_status(job.status) or "", starts))
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


class JobTaskHooks:
    """The failure handling every Celery task of a job shares, mixed into `celery.Task`
    by the worker's and the service's apps (this module imports no Celery): a task that
    raises ends its job failed with the reason; one that returns or raises — it did not
    kill its worker — clears its step's start count."""

    name: str

    @staticmethod
    def _job(args, kwargs) -> tuple[JobStore, str | None]:
        from dicom_synth.jobstore import JobStore
        from dicom_synth.settings import get_settings

        return JobStore(get_settings().jobs_db_url), (args[0] if args else kwargs.get("job_id"))

    def on_failure(self, exc, task_id, args, kwargs, einfo) -> None:  # noqa: ARG002
        fail_from_task(*self._job(args, kwargs), exc)

    def after_return(self, status, retval, task_id, args, kwargs, einfo) -> None:  # noqa: ARG002
        end_attempt(*self._job(args, kwargs), self.name)
