import multiprocessing as mp

import pytest

from dicom_synth.domain import Job, JobStatus
from dicom_synth.jobstore import JobNotFound, JobStore


def _job(job_id="j1"):
    return Job(job_id=job_id, status=JobStatus.RECEIVED, source_series_uid="1.2.3",
               study_instance_uid="1.2", origin="http")


def test_create_get_update_list(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite3")
    store.create(_job("a"))
    store.create(_job("b"))
    job = store.update("a", status=JobStatus.SKIPPED, error="no route")
    assert job.status is JobStatus.SKIPPED and job.error == "no route"
    again = JobStore(tmp_path / "jobs.sqlite3").get("a")  # survives a new process/handle
    assert again.status is JobStatus.SKIPPED and again.public()["status"] == "skipped"
    assert [j.job_id for j in store.recent()] == ["b", "a"]
    assert [j.job_id for j in store.unfinished()] == ["b"]


def test_unknown_job_and_field(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite3")
    with pytest.raises(JobNotFound):
        store.get("nope")
    store.create(_job())
    with pytest.raises(ValueError, match="unknown job fields"):
        store.update("j1", colour="red")


def _work(db, prefix, n):
    store = JobStore(db)
    for i in range(n):
        store.create(_job(f"{prefix}{i}"))
        store.update(f"{prefix}{i}", status=JobStatus.RUNNING, progress=0.5)
        store.update(f"{prefix}{i}", status=JobStatus.DONE, progress=1.0)


def test_concurrent_writers_from_processes(tmp_path):
    db = tmp_path / "jobs.sqlite3"
    JobStore(db)
    procs = [mp.get_context("spawn").Process(target=_work, args=(db, p, 15)) for p in "xyz"]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    jobs = JobStore(db).recent(limit=100)
    assert len(jobs) == 45
    assert all(j.status is JobStatus.DONE and j.progress == 1.0 for j in jobs)
