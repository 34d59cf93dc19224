"""The operator's search over jobs (the dashboard's job list): filters by state, task,
calling AE and creation time, a search by accession number, patient ID or job ID, newest
first, one page at a time. Everything is a query on indexed columns (migration 0004), so a
page costs the same with ten jobs or ten thousand: no job body is read but those shown.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Select, func, or_, select

from dicom_synth.domain import Job
from dicom_synth.jobstore import JobStore, jobs
from dicom_synth.series import read_header

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
        query = query.where(or_(jobs.c.accession_number == q.text, jobs.c.patient_id == q.text,
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


def search_keys(files: Sequence[Path]) -> dict[str, str | None]:
    """The accession number and patient ID of a series (from its first readable header),
    for a new job: what the operator will search it by."""
    for path in files:
        ds = read_header(Path(path))
        if ds is not None:
            return {"accession_number": str(ds.get("AccessionNumber", "") or "").strip() or None,
                    "patient_id": str(ds.get("PatientID", "") or "").strip() or None}
    return {"accession_number": None, "patient_id": None}
