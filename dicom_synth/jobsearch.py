"""The operator's search over jobs (the dashboard's job list): filters by state, task,
calling AE and creation time, a search by accession number, patient ID or job ID, newest
first, one page at a time. Everything is a query on indexed columns (migration 0004), so a
page costs the same with ten jobs or ten thousand: no job body is read but those shown.

The job database holds no patient value (issue 17): a job keeps keyed digests
(HMAC-SHA256) of its accession number and patient ID, made with a secret of the
installation kept beside the series it protects (`<data_dir>/search-key`, 0600), so a
search matches an exact value and a copy of the database alone reveals none.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Select, func, or_, select

from dicom_synth.domain import Job
from dicom_synth.jobstore import JobStore, jobs
from dicom_synth.series import read_header
from dicom_synth.settings import Settings

PAGE_SIZE = 50
MAX_PAGE_SIZE = 500


@dataclass(frozen=True)
class JobQuery:
    status: str | None = None
    task: str | None = None
    calling_ae: str | None = None
    since: float | None = None  # created at or after (epoch seconds)
    until: float | None = None  # created before
    text: str | None = None  # an accession number, patient ID or job ID, exactly
    key: bytes = b""  # the installation's search key (search_key), for the digests of `text`
    limit: int = PAGE_SIZE
    offset: int = 0


@dataclass(frozen=True)
class JobPage:
    jobs: list[Job]
    total: int  # jobs matching the filters, on every page
    query: JobQuery

    @property
    def first(self) -> int:
        return self.query.offset + 1 if self.jobs else 0

    @property
    def last(self) -> int:
        return self.query.offset + len(self.jobs)

    @property
    def has_previous(self) -> bool:
        return self.query.offset > 0

    @property
    def has_next(self) -> bool:
        return self.last < self.total


def origin_of_ae(calling_ae: str) -> str:
    """The job's `origin` for a series a modality sent (service.listener)."""
    return f"dicom:{calling_ae}"


def _filtered(query: Select, q: JobQuery) -> Select:
    if q.status:
        query = query.where(jobs.c.status == q.status)
    if q.task:
        query = query.where(jobs.c.task == q.task)
    if q.calling_ae:
        query = query.where(jobs.c.origin == origin_of_ae(q.calling_ae))
    if q.since is not None:
        query = query.where(jobs.c.created_at >= q.since)
    if q.until is not None:
        query = query.where(jobs.c.created_at < q.until)
    if q.text:
        digest = search_digest(q.key, q.text)
        query = query.where(or_(jobs.c.accession_digest == digest, jobs.c.patient_digest == digest,
                                jobs.c.job_id == q.text))
    return query


def page_query(q: JobQuery) -> Select:
    """The SELECT of one page (bench/ and tests/ read its plan)."""
    limit = max(1, min(q.limit, MAX_PAGE_SIZE))
    return (_filtered(select(jobs.c.body), q).order_by(jobs.c.created_at.desc(), jobs.c.job_id.desc())
            .limit(limit).offset(max(0, q.offset)))


def find_jobs(store: JobStore, q: JobQuery) -> JobPage:
    """One page of the jobs matching `q`, newest first, and how many match in all."""
    count = _filtered(select(func.count()).select_from(jobs), q)
    with store.engine.connect() as conn:
        total = conn.execute(count).scalar_one()
        bodies = conn.execute(page_query(q)).scalars().all()
    return JobPage([store._decode(b) for b in bodies], total, q)  # the store's own decoding


KEY_BYTES = 32
DIGEST_HEX = 32  # 128 bits of the HMAC: no collision among any site's jobs


def search_key(settings: Settings) -> bytes:
    """The installation's secret for the search digests, made once (0600) where every node
    that shares the data directory finds it."""
    path = settings.data_dir / "search-key"
    try:
        return bytes.fromhex(path.read_text().strip())
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first
        return bytes.fromhex(path.read_text().strip())
    key = secrets.token_bytes(KEY_BYTES)
    with os.fdopen(fd, "w") as f:
        f.write(key.hex() + "\n")
    return key


def search_digest(key: bytes, value: str) -> str:
    """What the job database keeps of an accession number or patient ID."""
    return hmac.new(key, value.strip().encode(), hashlib.sha256).hexdigest()[:DIGEST_HEX]


def search_keys(files: Sequence[Path], key: bytes) -> dict[str, str | None]:
    """The digests of the accession number and patient ID of a series (from its first
    readable header), for a new job: what the operator will search it by."""
    for path in files:
        ds = read_header(Path(path))
        if ds is not None:
            values = {name: str(ds.get(keyword, "") or "").strip()
                      for name, keyword in (("accession_digest", "AccessionNumber"), ("patient_digest", "PatientID"))}
            return {name: search_digest(key, v) if v else None for name, v in values.items()}
    return {"accession_digest": None, "patient_digest": None}


def patient_values(files: Sequence[Path]) -> dict[str, str | None]:
    """The accession number and patient ID read from a job's kept source series, for the
    job page (never stored in the job database)."""
    for path in files:
        ds = read_header(Path(path))
        if ds is not None:
            return {"accession_number": str(ds.get("AccessionNumber", "") or "").strip() or None,
                    "patient_id": str(ds.get("PatientID", "") or "").strip() or None}
    return {"accession_number": None, "patient_id": None}
