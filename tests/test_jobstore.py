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


def test_rows_written_before_source_contrast_still_decode(tmp_path):
    """A body stored by an older release (no source_contrast, no evidence) reads as a Job
    with the new fields at their defaults, and updates keep working on it."""
    import json
    import sqlite3

    store = JobStore(tmp_path / "jobs.sqlite3")
    old = {"job_id": "old", "status": "skipped", "source_series_uid": "1.2.3", "study_instance_uid": "1.2",
           "origin": "http", "requested_task": "auto", "progress": 1.0, "series_class": "unknown", "task": None,
           "output_series_uids": [], "error": "no route", "created_at": 1.0, "updated_at": 1.0,
           "timeline": {"skipped": 1.0}, "retired_field": 3}
    with sqlite3.connect(store.db_path) as conn:
        conn.execute("INSERT INTO jobs (job_id, status, created_at, updated_at, body) VALUES (?, ?, ?, ?, ?)",
                     ("old", "skipped", 1.0, 1.0, json.dumps(old)))
    job = store.get("old")
    assert job.source_contrast is None and job.evidence is None
    assert job.public()["source_contrast"] is None and job.public()["evidence"] is None
    assert store.update("old", source_contrast="t1").source_contrast == "t1"
    assert store.get("old").public()["source_contrast"] == "t1"
