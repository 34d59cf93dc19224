"""The job store on both backends: SQLite (the default) and PostgreSQL."""

import json
import multiprocessing as mp
import sqlite3

import pytest
from sqlalchemy import insert

from dicom_synth.database import current_revision, head_revision
from dicom_synth.domain import Job, JobStatus
from dicom_synth.jobstate import IllegalTransition, advance, new_job
from dicom_synth.jobstore import JobNotFound, JobStore, jobs

both_backends = pytest.mark.parametrize("job_db_url", ["sqlite", "postgresql"], indirect=True)
S = JobStatus


HEAD = head_revision()


def _job(job_id="j1"):
    return new_job(job_id=job_id, source_series_uid="1.2.3", study_instance_uid="1.2", origin="http")


@both_backends
def test_create_get_update_list(job_store_url):
    store = JobStore(job_store_url)
    store.create(_job("a"))
    store.create(_job("b"))
    advance(store, "a", S.CLASSIFIED)
    job = advance(store, "a", S.SKIPPED, error="no route")
    assert job.status is S.SKIPPED and job.error == "no route"
    assert list(job.timeline) == ["received", "classified", "skipped"]
    again = JobStore(job_store_url).get("a")  # survives a new handle
    assert again.status is S.SKIPPED and again.public()["status"] == "skipped"
    assert [j.job_id for j in store.recent()] == ["b", "a"]
    assert [j.job_id for j in store.recent(status=S.SKIPPED)] == ["a"]
    assert [j.job_id for j in store.unfinished()] == ["b"]
    assert current_revision(store.engine) == HEAD


@both_backends
def test_the_queries_that_differ_by_dialect(job_store_url):
    """counts() reads the task out of the JSON body (json_extract on SQLite, a JSON cast on
    PostgreSQL); of_source_series() searches the body for a UID, which holds LIKE's own
    wildcards (`_` here) that must match only themselves; ended_before() by time."""
    import time

    store = JobStore(job_store_url)
    for job_id, series in (("a", "1.2_3"), ("b", "1.2_3"), ("c", "1.2x3"), ("d", "1.2%3")):
        store.create(new_job(job_id=job_id, source_series_uid=series, study_instance_uid="1.2", origin="dicom"))
    advance(store, "a", S.CLASSIFIED)
    advance(store, "a", S.QUEUED, task="dce_phase1")
    advance(store, "b", S.FAILED, error="x")
    assert store.counts() == {("queued", "dce_phase1"): 1, ("failed", ""): 1, ("received", ""): 2}
    assert sorted(j.job_id for j in store.of_source_series("1.2_3")) == ["a", "b"]
    assert [j.job_id for j in store.of_source_series("1.2%3")] == ["d"]
    assert [j.job_id for j in store.ended_before(time.time() + 1)] == ["b"]
    assert store.ended_before(store.get("b").updated_at) == []


@both_backends
def test_unknown_job_and_field_and_non_initial_create(job_store_url):
    store = JobStore(job_store_url)
    with pytest.raises(JobNotFound):
        store.get("nope")
    with pytest.raises(JobNotFound):
        store.update("nope", progress=0.5)
    store.create(_job())
    with pytest.raises(ValueError, match="unknown job fields"):
        store.update("j1", colour="red")
    with pytest.raises(ValueError, match="starts received"):
        store.create(Job(job_id="x", status=S.DONE, source_series_uid="1", study_instance_uid="2", origin="http"))


@both_backends
def test_the_store_itself_refuses_an_illegal_status(job_store_url):
    """Even a status written around `advance` is checked against the table, and nothing
    of the refused change is written."""
    store = JobStore(job_store_url)
    store.create(_job())
    with pytest.raises(IllegalTransition, match="received → done is not allowed"):
        store.update("j1", status=S.DONE, progress=1.0)
    job = store.get("j1")
    assert job.status is S.RECEIVED and job.progress == 0.0


def _legal_path(url, prefix, n):
    store = JobStore(url)
    for i in range(n):
        job_id = f"{prefix}{i}"
        store.create(_job(job_id))
        for to in (S.CLASSIFIED, S.QUEUED, S.RUNNING):
            advance(store, job_id, to)
        store.update(job_id, progress=0.5)
        advance(store, job_id, S.DONE, progress=1.0)


@both_backends
def test_concurrent_writers_from_processes(job_store_url):
    JobStore(job_store_url)
    procs = [mp.get_context("spawn").Process(target=_legal_path, args=(job_store_url, p, 15)) for p in "xyz"]
    for p in procs:
        p.start()
    for p in procs:
        p.join(90)
        assert p.exitcode == 0
    found = JobStore(job_store_url).recent(limit=100)
    assert len(found) == 45
    assert all(j.status is S.DONE and j.progress == 1.0 for j in found)


def _append(url, tag, n):
    """Read-modify-write of one list field, plus a field of this process's own."""
    store = JobStore(url)
    for i in range(n):
        store.mutate("shared", lambda job, i=i: job.output_series_uids.append(f"{tag}{i}"))
        if tag == "a":
            store.update("shared", progress=(i + 1) / n)
        else:
            store.update("shared", claimed_by=f"{tag}{i}")


@both_backends
def test_concurrent_updates_of_one_job_from_two_processes_lose_nothing(job_store_url):
    """Two processes change the same job 60 times each: every append survives (the row
    is locked from read to write) and each process's own field has its last value."""
    store = JobStore(job_store_url)
    store.create(_job("shared"))
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_append, args=(job_store_url, tag, 60)) for tag in "ab"]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    job = store.get("shared")
    assert sorted(job.output_series_uids) == sorted([f"a{i}" for i in range(60)] + [f"b{i}" for i in range(60)])
    assert job.progress == 1.0 and job.claimed_by == "b59"


@both_backends
def test_rows_written_before_source_contrast_still_decode(job_store_url):
    """A body stored by an older release (no source_contrast, no evidence) reads as a Job
    with the new fields at their defaults, and updates keep working on it."""
    store = JobStore(job_store_url)
    old = {"job_id": "old", "status": "skipped", "source_series_uid": "1.2.3", "study_instance_uid": "1.2",
           "origin": "http", "requested_task": "auto", "progress": 1.0, "series_class": "unknown", "task": None,
           "output_series_uids": [], "error": "no route", "created_at": 1.0, "updated_at": 1.0,
           "timeline": {"skipped": 1.0}, "retired_field": 3}
    with store.engine.begin() as conn:
        conn.execute(insert(jobs).values(job_id="old", status="skipped", created_at=1.0, updated_at=1.0,
                                         body=json.dumps(old)))
    job = store.get("old")
    assert job.source_contrast is None and job.evidence is None
    assert job.public()["source_contrast"] is None and job.public()["evidence"] is None
    assert store.update("old", source_contrast="t1").source_contrast == "t1"
    assert store.get("old").public()["source_contrast"] == "t1"


def test_a_data_dir_from_before_alembic_is_adopted(tmp_path):
    """A jobs.sqlite3 made by the release before Alembic (same table, no alembic_version)
    opens with its jobs intact and is brought to the newest revision."""
    db = tmp_path / "var" / "jobs.sqlite3"
    db.parent.mkdir()
    body = {"job_id": "kept", "status": "done", "source_series_uid": "1", "study_instance_uid": "2",
            "origin": "http", "timeline": {"done": 1.0}}
    with sqlite3.connect(db) as conn:
        conn.executescript("""
            CREATE TABLE jobs (job_id TEXT PRIMARY KEY, status TEXT NOT NULL, created_at REAL NOT NULL,
                               updated_at REAL NOT NULL, body TEXT NOT NULL);
            CREATE INDEX jobs_created ON jobs (created_at);
            CREATE INDEX jobs_status ON jobs (status);
        """)
        conn.execute("INSERT INTO jobs VALUES ('kept', 'done', 1.0, 1.0, ?)", (json.dumps(body),))
    store = JobStore(db)
    assert store.get("kept").status is S.DONE
    assert current_revision(store.engine) == HEAD
    with sqlite3.connect(db) as conn:
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"jobs_created", "jobs_status"} <= indexes


@both_backends
def test_db_upgrade_command(job_store_url, monkeypatch, capsys):
    """`dicom-synth db upgrade` migrates SYNTH_DATABASE_URL's database and says where it is."""
    from dicom_synth.cli import main
    from dicom_synth.settings import get_settings

    monkeypatch.setenv("SYNTH_DATABASE_URL", job_store_url)
    get_settings.cache_clear()
    try:
        assert main(["db", "upgrade"]) == 0
    finally:
        get_settings.cache_clear()
    assert capsys.readouterr().out.strip().endswith(f"revision {HEAD}")
    assert JobStore(job_store_url).recent() == []
