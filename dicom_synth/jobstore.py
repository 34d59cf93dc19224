"""Job records behind SQLAlchemy 2: SQLite in the data directory by default, PostgreSQL
in production (`SYNTH_DATABASE_URL`); the schema comes from Alembic
(`dicom_synth/migrations`, upgraded on first use in each process, see
`dicom_synth.database`).

Every process — gateway, listener, workers — reads and writes the same records and each
can restart at any moment; a committed row survives any of them. A change is a locked
read-modify-write in one transaction (`mutate`), so concurrent writers never lose each
other's fields; a status change is checked against `dicom_synth.jobstate`'s table.

A job's pending message (its outbox, `Job.outbox`) is written in the same transaction as
the state change it acts on; the `outbox_due` column says when the relay should send it
(NULL once sent or taken). An error of the database itself (a full disk, PostgreSQL
down) is raised as `JobStoreUnavailable`, and remembered for `write_problem`.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import JSON, Column, Float, Index, MetaData, Table, Text, cast, func, insert, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from dicom_synth import metrics
from dicom_synth.database import JobStoreUnavailable, engine_for, is_sqlite, sqlite_url, write_connection
from dicom_synth.diskspace import free_bytes
from dicom_synth.domain import Job, JobStatus
from dicom_synth.jobstate import INITIAL, JOB_FIELDS, check_fields, check_transition

metadata = MetaData()
jobs = Table(
    "jobs",
    metadata,
    Column("job_id", Text, primary_key=True),
    Column("status", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("body", Text, nullable=False),
    Column("outbox_due", Float, nullable=True),  # migration 0003_outbox
    Index("jobs_created", "created_at"),
    Index("jobs_status", "status"),
    Index("jobs_outbox_due", "outbox_due"),
    # Copies of body fields the dashboard filters and searches by (migration 0004, dicom_synth.jobsearch).
    Column("task", Text),
    Column("origin", Text),
    Column("accession_digest", Text),
    Column("patient_digest", Text),
    Index("jobs_status_created", "status", "created_at"),
    Index("jobs_task_created", "task", "created_at"),
    Index("jobs_origin_created", "origin", "created_at"),
    Index("jobs_accession", "accession_digest"),
    Index("jobs_patient", "patient_digest"),
)

T = TypeVar("T")
SQLITE_MIN_FREE_BYTES = 4096  # under one database page free beside an SQLite job store, new work is refused
ERROR_MEMORY_SECONDS = 5.0  # a write error is reported by `write_problem` this long (a later success clears it)
_errors: dict[str, tuple[float, str]] = {}  # url -> (when, why) of this process's last database error
_errors_lock = threading.Lock()


def search_columns(job: Job) -> dict[str, str | None]:
    """The row's copies of the fields the dashboard filters and searches by."""
    return {"task": job.task, "origin": job.origin, "accession_digest": job.accession_digest,
            "patient_digest": job.patient_digest}


class JobNotFound(KeyError):
    """No job with that ID."""


__all__ = ["JobNotFound", "JobStore", "JobStoreUnavailable", "write_problem"]


def _outbox_due(job: Job) -> float | None:
    return job.outbox.get("due") if job.outbox and not JobStatus(job.status).is_final else None


@contextmanager
def _database_errors(url: str) -> Iterator[None]:
    """Raise a database error as JobStoreUnavailable, remembering it for `write_problem`."""
    try:
        yield
    except OperationalError as exc:
        reason = f"job store unavailable: {getattr(exc, 'orig', None) or exc}"
        with _errors_lock:
            _errors[url] = (time.monotonic(), reason)
        raise JobStoreUnavailable(reason) from exc


def _wrote(url: str) -> None:
    if url in _errors:
        with _errors_lock:
            _errors.pop(url, None)


def write_problem(url: str) -> str | None:
    """Why new work should not be taken now (the job store could not record it), or None:
    a database error in this process within ERROR_MEMORY_SECONDS and not followed by a
    successful write, or (SQLite) a file system with no room left for job records."""
    with _errors_lock:
        seen = _errors.get(url)
    if seen is not None and time.monotonic() - seen[0] < ERROR_MEMORY_SECONDS:
        return seen[1]
    if is_sqlite(url) and (database := make_url(url).database) and database != ":memory:":
        free = free_bytes(Path(database).parent)
        if free < SQLITE_MIN_FREE_BYTES:
            return f"job store out of space: {free} bytes free beside {Path(database).name}"
    return None


class JobStore:
    def __init__(self, url: str | Path) -> None:
        """`url`: an SQLAlchemy URL, or the path of an SQLite file."""
        self.url = url if isinstance(url, str) else sqlite_url(url)
        with _database_errors(self.url):
            self.engine = engine_for(self.url)

    @staticmethod
    def _decode(body: str) -> Job:
        data = json.loads(body)
        data["status"] = JobStatus(data["status"])
        return Job(**{k: v for k, v in data.items() if k in JOB_FIELDS})

    def create(self, job: Job) -> Job:
        """Insert a new job; it starts in the initial state (`jobstate.new_job`)."""
        if job.status != INITIAL:
            raise ValueError(f"a new job starts {INITIAL}, not {job.status}")
        now = time.time()
        job.created_at = job.created_at or now
        job.updated_at = now
        job.timeline.setdefault(str(job.status), now)
        with _database_errors(self.url), write_connection(self.engine) as conn, conn.begin():
            conn.execute(insert(jobs).values(
                job_id=job.job_id, status=str(job.status), created_at=job.created_at,
                updated_at=job.updated_at, body=json.dumps(asdict(job)), outbox_due=_outbox_due(job),
                **search_columns(job),
            ))
        _wrote(self.url)
        metrics.JOBS_CREATED.labels(origin=job.origin.partition(":")[0]).inc()
        return job

    def get(self, job_id: str) -> Job:
        with _database_errors(self.url), self.engine.connect() as conn:
            body = conn.execute(select(jobs.c.body).where(jobs.c.job_id == job_id)).scalar_one_or_none()
        if body is None:
            raise JobNotFound(job_id)
        return self._decode(body)

    def mutate(self, job_id: str, change: Callable[[Job], T]) -> tuple[Job, T]:
        """Run `change` on the job with its row locked (FOR UPDATE on PostgreSQL, BEGIN
        IMMEDIATE on SQLite) and write the result in the same transaction; `change`
        returns False to write nothing. A status change must be in the state table."""
        with _database_errors(self.url), write_connection(self.engine) as conn, conn.begin():
            body = conn.execute(
                select(jobs.c.body).where(jobs.c.job_id == job_id).with_for_update()
            ).scalar_one_or_none()
            if body is None:
                raise JobNotFound(job_id)
            job = self._decode(body)
            before, due_before = job.status, _outbox_due(job)
            result = change(job)
            if result is False:
                return job, result
            job.status = JobStatus(job.status)
            if job.status != before:
                check_transition(job_id, before, job.status)
            job.updated_at = time.time()
            if job.status != before or str(job.status) not in job.timeline:
                job.timeline[str(job.status)] = job.updated_at
            conn.execute(
                update(jobs).where(jobs.c.job_id == job_id)
                .values(status=str(job.status), updated_at=job.updated_at, body=json.dumps(asdict(job)),
                        **({"outbox_due": due} if (due := _outbox_due(job)) != due_before else {}),
                        **search_columns(job))
            )
            entered = job.timeline.get(str(before)) if job.status != before else None
        _wrote(self.url)
        if entered is not None:  # committed: the step `before` took this long
            metrics.STEP_SECONDS.labels(step=str(before)).observe(max(0.0, job.updated_at - entered))
        return job, result

    def update(self, job_id: str, **changes: Any) -> Job:
        """Write fields atomically. The status moves through `jobstate.advance`, but a
        status given here is still checked against the state table."""
        check_fields(changes)

        def apply(job: Job) -> None:
            if "status" in changes:  # re-entering a state is a transition too (the table says which)
                check_transition(job_id, job.status, JobStatus(changes["status"]))
            for key, value in changes.items():
                setattr(job, key, JobStatus(value) if key == "status" else value)

        return self.mutate(job_id, apply)[0]

    def recent(self, limit: int = 50, status: JobStatus | None = None) -> list[Job]:
        query = select(jobs.c.body).order_by(jobs.c.created_at.desc()).limit(limit)
        if status is not None:
            query = query.where(jobs.c.status == str(status))
        with self.engine.connect() as conn:
            return [self._decode(b) for b in conn.execute(query).scalars()]

    def counts(self) -> dict[tuple[str, str], int]:
        """How many jobs are in each (status, task) (task '' until classified), for /metrics."""
        task = (func.json_extract(jobs.c.body, "$.task") if self.engine.dialect.name == "sqlite"
                else cast(jobs.c.body, JSON)["task"].as_string())
        query = select(jobs.c.status, task, func.count()).group_by(jobs.c.status, task)
        with self.engine.connect() as conn:
            return {(status, name or ""): n for status, name, n in conn.execute(query)}

    def ended_before(self, cutoff: float) -> list[Job]:
        """Jobs in a final state last changed before `cutoff` (epoch seconds), oldest first."""
        final = [str(s) for s in JobStatus if s.is_final]
        query = (select(jobs.c.body).where(jobs.c.status.in_(final), jobs.c.updated_at < cutoff)
                 .order_by(jobs.c.updated_at))
        with self.engine.connect() as conn:
            return [self._decode(b) for b in conn.execute(query).scalars()]

    def of_source_series(self, series_uid: str) -> list[Job]:
        """Every job made from the series (its UID as the job body stores it)."""
        needle = json.dumps({"source_series_uid": series_uid})[1:-1]
        query = select(jobs.c.body).where(jobs.c.body.contains(needle, autoescape=True))
        with self.engine.connect() as conn:
            return [j for j in (self._decode(b) for b in conn.execute(query).scalars())
                    if j.source_series_uid == series_uid]

    def unfinished(self) -> list[Job]:
        """Jobs not in a final state, oldest first (for recovery after a restart)."""
        final = [str(s) for s in JobStatus if s.is_final]
        query = select(jobs.c.body).where(jobs.c.status.not_in(final)).order_by(jobs.c.created_at)
        with _database_errors(self.url), self.engine.connect() as conn:
            return [self._decode(b) for b in conn.execute(query).scalars()]

    def outbox_due(self, now: float) -> list[Job]:
        """Jobs whose pending message is due to be sent by the relay at `now`, oldest first."""
        query = select(jobs.c.body).where(jobs.c.outbox_due <= now).order_by(jobs.c.outbox_due)
        with _database_errors(self.url), self.engine.connect() as conn:
            return [self._decode(b) for b in conn.execute(query).scalars()]
