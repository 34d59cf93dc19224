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

Outbox: a state change that needs a message (the task that acts on it) writes that
message into the job (`Job.outbox`: task, token, when the relay should send it) in the
same transaction (`advance(..., send=TASK)`, `new_job(send=TASK)`); the writer sends it
after the commit (`deliver`), and `relay` sends whatever a dead writer or a broker outage
left unsent. A task takes only the message the job names (`begin_attempt(token=...)`), so
a copy the relay sent twice, or an old one a restarted broker kept, is a no-op: one job,
one run of each step, one output. When the broker restarted (and may have lost its
queues), `redispatch_untaken` sends every message no task has taken yet afresh.

Stuck jobs: a job that nothing changed for longer than its step's deadline (its worker
died and never came back under the same name, a message lost) is requeued by
`requeue_stuck`, which the runner calls at start and periodically.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Collection, Mapping
from dataclasses import fields as dataclass_fields
from typing import TYPE_CHECKING, Any

from dicom_synth.database import JobStoreUnavailable
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
OUTBOX_LEASE_SECONDS = 10.0  # a message not confirmed sent this long after its writer took it is the relay's


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


def new_job(*, send: str | None = None, **fields: Any) -> Job:
    """A job in the initial state, for `JobStore.create` (which accepts no other), with the
    message `send` (a task name) in its outbox: `deliver` it once created."""
    return Job(status=INITIAL, outbox=message(send) if send else None, **fields)


def message(task: str, *, now: float | None = None) -> dict:
    """A pending message for a job's outbox: its writer sends it right after the commit;
    the relay, if it is still unsent OUTBOX_LEASE_SECONDS later."""
    now = time.time() if now is None else now
    return {"task": task, "token": uuid.uuid4().hex, "due": now + OUTBOX_LEASE_SECONDS, "taken": None}


def advance(
    store: JobStore,
    job_id: str,
    to: JobStatus,
    *,
    only_from: Collection[JobStatus] | None = None,
    send: str | None = None,
    **fields: Any,
) -> Job | None:
    """Move the job to `to`, writing `fields` with it, in one locked transaction; with
    `send` (a task name), the message that acts on the new state goes into the job's
    outbox in the same transaction (`deliver` the returned job after). A final state
    empties the outbox.

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
        if send is not None:
            job.outbox = message(send)
        elif to.is_final:
            job.outbox = None
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
    token: str | None = None,
    message_id: str | None = None,
    **fields: Any,
) -> Job | None:
    """Count a start of `step` (a task name) for the job, moving it to `to` (if given) and
    writing `fields`, in one transaction. Returns the job when the step may run; None when
    the job is not in `only_from` (a duplicate task), when the message's `token` is not
    the one in the job's outbox or was taken by another message (`message_id`, the Celery
    task ID: a redelivery or retry of the same message keeps it), or when `limit` starts of
    this step never finished: the job then ends failed with the reason (a poison job)."""
    limit = max_attempts() if limit is None else limit
    check_fields(fields)

    stale: list[bool] = []  # the job waits, but not for this message (nothing is written)

    def count(job: Job) -> str | bool:
        if job.status not in only_from:
            return False
        box = job.outbox
        if token is not None and not (box and box["token"] == token and box.get("taken") in (None, message_id)):
            stale.append(True)
            return False
        starts = job.attempts.get(step, 0)
        if starts >= limit:
            check_transition(job_id, job.status, S.FAILED)
            job.status, job.error, job.outbox = S.FAILED, poison_reason(step, starts), None
            return "poison"
        if box and (token is not None or box["task"] == step):
            job.outbox = {**box, "due": None, "taken": message_id or "direct"}
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
    if stale:
        log.info("job %s: not starting %s for a message it no longer waits for (a copy)", job_id, step)
        return None
    if result is False:
        log.info("job %s is %s: not starting %s (a duplicate task)", job_id, job.status, step)
        return None
    return job


def deliver(store: JobStore, send_task: Callable[..., Any], job: Job | None) -> bool:
    """Send the job's pending message, after the transaction that wrote it, and note it
    sent. Never raises: a broker that cannot take it leaves it in the outbox, for `relay`
    (the state it acts on is recorded already). True when the broker took it."""
    box = job.outbox if job is not None else None
    if job is None or not box or box.get("due") is None or box.get("taken"):
        return False
    try:
        send_task(box["task"], args=[job.job_id], kwargs={"token": box["token"]})
    except Exception as exc:  # the broker is down: the relay sends it when it is back
        log.warning("job %s: %s not sent now (%s: %s); the outbox relay sends it", job.job_id, box["task"],
                    type(exc).__name__, exc)
        return False

    def sent(j: Job) -> bool:
        if not j.outbox or j.outbox["token"] != box["token"] or j.outbox.get("due") is None:
            return False
        j.outbox = {**j.outbox, "due": None}
        return True

    try:
        store.mutate(job.job_id, sent)
    except JobStoreUnavailable as exc:  # the relay may send it again: the task takes one copy
        log.warning("job %s: %s sent, but not noted (%s)", job.job_id, box["task"], exc)
    return True


def relay(store: JobStore, send_task: Callable[..., Any], *, now: float | None = None) -> list[tuple[str, str]]:
    """Send the messages their writers did not confirm sent within the lease (the broker
    was down, the writer died after its commit). Idempotent and safe to run in several
    processes: each message is claimed (its lease renewed) before it is sent, and a task
    takes one copy of it. Returns (job_id, task name) for each message sent."""
    now = time.time() if now is None else now
    sent: list[tuple[str, str]] = []
    for job in store.outbox_due(now):
        token = job.outbox["token"] if job.outbox else None

        def claim(j: Job, token=token) -> bool:
            box = j.outbox
            if not box or box["token"] != token or box.get("due") is None or box["due"] > now or box.get("taken"):
                return False
            j.outbox = {**box, "due": now + OUTBOX_LEASE_SECONDS}
            return True

        claimed, ok = store.mutate(job.job_id, claim)
        if ok and deliver(store, send_task, claimed):
            sent.append((job.job_id, claimed.outbox["task"]))
    if sent:
        log.warning("outbox relay sent %d pending messages", len(sent))
    return sent


def redispatch_untaken(store: JobStore, send_task: Callable[..., Any]) -> list[tuple[str, str]]:
    """After the broker restarted (without persistence it lost its queues; with it, it may
    have lost the last second): every unfinished job whose message no task took yet gets
    it again under a new token, so a copy the broker kept is a no-op. A job whose task is
    running (or whose worker died: `resume`, `requeue_stuck`) is left alone."""
    sent: list[tuple[str, str]] = []
    for job in store.unfinished():
        if not job.outbox or job.outbox.get("taken"):
            continue
        token = job.outbox["token"]

        def renew(j: Job, token=token) -> bool:
            if not j.outbox or j.outbox["token"] != token or j.outbox.get("taken") or j.status.is_final:
                return False
            j.outbox = message(j.outbox["task"])
            return True

        renewed, ok = store.mutate(job.job_id, renew)
        if ok:
            deliver(store, send_task, renewed)
            sent.append((job.job_id, renewed.outbox["task"]))
    if sent:
        log.warning("the broker restarted: sent %d messages no task had taken again", len(sent))
    return sent


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
    node: str | None = None,
    limit: int | None = None,
) -> list[tuple[str, str]]:
    """Put unfinished jobs back on their queues; runs at every process start.

    A worker that comes back resumes those it had claimed (`claimed_by`, its Celery name
    `kind@node`), whose messages Redis would redeliver only after the visibility timeout.
    A node's runner (before its workers start) resumes those claimed by any worker of its
    `node`, and those no worker claimed yet; never another node's, which may be running
    them now: a dead node's jobs are taken over by `requeue_stuck` after their deadline.
    With neither, every unfinished job. A `running` job goes back to `queued`.
    Idempotent: tasks check the job's state, so a job that is still on its queue and is
    sent again runs once to completion and the copy is a no-op. A job whose step already
    had `limit` unfinished starts (poison) ends failed instead.
    Returns (job_id, task name) for each job sent.
    """
    jobs = [job for job in store.unfinished()
            if (claimed_by is None or job.claimed_by == claimed_by)
            and (node is None or job.claimed_by is None or claimed_node(job.claimed_by) == node)]
    return _requeue(store, send_task, jobs, limit)


def claimed_node(claimed_by: str) -> str:
    """The node of a Celery worker name `kind@node` (the whole name when it has no @)."""
    return claimed_by.rpartition("@")[2]


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
        task = task_for_status(S.QUEUED if job.status == S.RUNNING else job.status)
        if task is None:
            continue
        # A `running` job goes back to `queued`; either way a new message (new token) goes
        # into the outbox with it, so any older copy still queued is a no-op.
        to = S.QUEUED if job.status == S.RUNNING else job.status
        requeued = advance(store, job.job_id, to, only_from={job.status}, send=task) if to != job.status else \
            _renew_message(store, job.job_id, job.status, task)
        if requeued is None:
            continue  # moved on meanwhile
        log.warning("resuming job %s (%s) with %s", job.job_id, job.status, task)
        deliver(store, send_task, requeued)
        sent.append((job.job_id, task))
    return sent


def _renew_message(store: JobStore, job_id: str, status: JobStatus, task: str) -> Job | None:
    """A new message `task` in the job's outbox, if it is still `status` (no status change)."""

    def renew(job: Job) -> bool:
        if job.status != status:
            return False
        job.outbox = message(task)
        return True

    job, renewed = store.mutate(job_id, renew)
    return job if renewed else None


class JobTaskHooks:
    """The failure handling every Celery task of a job shares, mixed into `celery.Task`
    by the worker's and the service's apps (this module imports no Celery): a task that
    raises ends its job failed with the reason; one that returns or raises — it did not
    kill its worker — clears its step's start count."""

    name: str
    # A job store that cannot write now (full disk, database down) is no fault of the job:
    # the task is retried with backoff until it can (the message keeps its token), not failed.
    retry_options: dict[str, Any] = {  # noqa: RUF012  (read, never changed)
        "autoretry_for": (JobStoreUnavailable,), "retry_backoff": 2, "retry_backoff_max": 30,
        "retry_jitter": False, "max_retries": None,
    }

    @staticmethod
    def _job(args, kwargs) -> tuple[JobStore, str | None]:
        from dicom_synth.jobstore import JobStore
        from dicom_synth.settings import get_settings

        return JobStore(get_settings().jobs_db_url), (args[0] if args else kwargs.get("job_id"))

    def on_failure(self, exc, task_id, args, kwargs, einfo) -> None:  # noqa: ARG002
        try:
            fail_from_task(*self._job(args, kwargs), exc)
        except JobStoreUnavailable as again:  # the stuck-job sweep takes it up later
            log.error("task %s: cannot record its failure (%s)", self.name, again)

    def after_return(self, status, retval, task_id, args, kwargs, einfo) -> None:  # noqa: ARG002
        try:
            end_attempt(*self._job(args, kwargs), self.name)
        except JobStoreUnavailable as exc:  # its start stays counted: one start nearer to poison
            log.error("task %s: cannot clear its start count (%s)", self.name, exc)
