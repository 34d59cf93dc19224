"""Job records, persisted in SQLite under the data directory.

SQLite (WAL) because every process — gateway, listener, workers — reads and writes the
same records and each can restart at any moment; a committed row survives any of them.
A connection per call keeps it safe across threads and forked Celery children.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from dicom_synth.domain import Job, JobStatus

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created_at);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status);
"""

_JOB_FIELDS = {f.name for f in fields(Job)}


class JobNotFound(KeyError):
    """No job with that ID."""


class JobStore:
    def __init__(self, db_path: Path) -> None:
        self.db_path = Path(db_path)
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as conn:
            conn.executescript(_SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self.db_path, timeout=30, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            yield conn
        finally:
            conn.close()

    @staticmethod
    def _decode(body: str) -> Job:
        data = json.loads(body)
        data["status"] = JobStatus(data["status"])
        return Job(**{k: v for k, v in data.items() if k in _JOB_FIELDS})

    def create(self, job: Job) -> Job:
        now = time.time()
        job.created_at = job.created_at or now
        job.updated_at = now
        job.timeline.setdefault(str(job.status), now)
        body = json.dumps(asdict(job))
        with self._connect() as conn:
            conn.execute(
                "INSERT INTO jobs (job_id, status, created_at, updated_at, body) VALUES (?, ?, ?, ?, ?)",
                (job.job_id, str(job.status), job.created_at, job.updated_at, body),
            )
        return job

    def get(self, job_id: str) -> Job:
        with self._connect() as conn:
            row = conn.execute("SELECT body FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        if row is None:
            raise JobNotFound(job_id)
        return self._decode(row[0])

    def update(self, job_id: str, **changes: Any) -> Job:
        """Apply changes atomically (read-modify-write inside one transaction)."""
        unknown = set(changes) - _JOB_FIELDS
        if unknown:
            raise ValueError(f"unknown job fields: {sorted(unknown)}")
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            row = conn.execute("SELECT body FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
            if row is None:
                conn.execute("ROLLBACK")
                raise JobNotFound(job_id)
            job = self._decode(row[0])
            before = job.status
            for key, value in changes.items():
                setattr(job, key, JobStatus(value) if key == "status" else value)
            job.updated_at = time.time()
            if job.status != before or str(job.status) not in job.timeline:
                job.timeline[str(job.status)] = job.updated_at
            conn.execute(
                "UPDATE jobs SET status = ?, updated_at = ?, body = ? WHERE job_id = ?",
                (str(job.status), job.updated_at, json.dumps(asdict(job)), job_id),
            )
            conn.execute("COMMIT")
        return job

    def recent(self, limit: int = 50, status: JobStatus | None = None) -> list[Job]:
        query = "SELECT body FROM jobs"
        params: tuple[Any, ...] = ()
        if status is not None:
            query += " WHERE status = ?"
            params = (str(status),)
        query += " ORDER BY created_at DESC LIMIT ?"
        with self._connect() as conn:
            rows = conn.execute(query, (*params, limit)).fetchall()
        return [self._decode(r[0]) for r in rows]

    def unfinished(self) -> list[Job]:
        """Jobs not in a final state, oldest first (for recovery after a restart)."""
        final = tuple(str(s) for s in JobStatus if s.is_final)
        marks = ",".join("?" for _ in final)
        with self._connect() as conn:
            rows = conn.execute(
                f"SELECT body FROM jobs WHERE status NOT IN ({marks}) ORDER BY created_at", final
            ).fetchall()
        return [self._decode(r[0]) for r in rows]
