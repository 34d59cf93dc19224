"""Retention and disk safety (issue 17) on a real 8 MiB tmpfs: jobs that ended more than
SYNTH_RETENTION_DAYS ago lose their input and output files (and the store its series once
no job needs it), say so in their record, and their result answers 410 Gone; the space
comes back. Below SYNTH_MIN_FREE_GB the listener answers 0xA700 and the gateway 507."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from dicom_synth.audit import AuditTrail
from dicom_synth.diskspace import free_bytes
from dicom_synth.domain import JobStatus
from dicom_synth.jobstate import advance, new_job
from dicom_synth.jobstore import JobStore
from dicom_synth.settings import Settings, get_settings, job_input_dir, job_output_dir
from service.gateway.main import create_app
from service.listener import Listener
from service.retention import DAY, purge_expired
from service.store import SeriesStore
from tests.peers import mounted_tmpfs
from tests.test_listener import HOST, scu_send

MR = "1.2.840.10008.5.1.4.1.1.4"
PATIENT = "RETENTION^PATIENT"
PATIENT_ID = "RET-4711"


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    with mounted_tmpfs(tmp_path / "tmpfs", "8m") as mnt:
        yield mnt


def _slice(path: Path, study: str, series: str, n: int, size: int = 128) -> Path:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = MR
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality, ds.InstanceNumber = study, series, "MR", n
    ds.PatientName, ds.PatientID = PATIENT, PATIENT_ID
    ds.ImagePositionPatient, ds.ImageOrientationPatient = [0, 0, float(n)], [1, 0, 0, 0, 1, 0]
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.full((size, size), n, dtype=np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _job(settings: Settings, jobs: JobStore, job_id: str, study: str, series: str, *, end: JobStatus | None,
         work: Path) -> None:
    """A job as the service leaves it: its series in the store, an input snapshot (hard
    links), two output files (32 KiB each), ended `end` (None: still running)."""
    store = SeriesStore(settings.store_dir)
    stored = [store.put(_slice(work / job_id / f"{i}.dcm", study, series, i)).path for i in range(1, 4)]
    job_input_dir(settings, job_id).mkdir(parents=True)
    for p in stored:
        os.link(p, job_input_dir(settings, job_id) / p.name)
    out = job_output_dir(settings, job_id) / "01"
    for i in range(1, 3):
        _slice(out / f"{i}.dcm", study, generate_uid(), i)
    jobs.create(new_job(job_id=job_id, source_series_uid=series, study_instance_uid=study, origin="dicom:MOD"))
    if end is not None:
        advance(jobs, job_id, end, error="test" if end == JobStatus.FAILED else None)
    else:
        advance(jobs, job_id, JobStatus.CLASSIFIED)


def _database_bytes(settings: Settings) -> int:
    """The SQLite job database's files (the database, its WAL and shared memory) in bytes."""
    db = settings.db_path
    return sum(p.stat().st_blocks * 512 for p in db.parent.glob(db.name + "*") if p.is_file())


def test_purge_after_retention_frees_space_and_says_so(tmpfs, tmp_path, caplog):
    settings = Settings(data_dir=tmpfs / "data", auth="off", retention_days=7, min_free_gb=0,
                        pacs="PACS@127.0.0.1:1", broker_url="redis://127.0.0.1:1/0")
    jobs = JobStore(settings.jobs_db_url)
    study = generate_uid()
    shared, alone, recent = generate_uid(), generate_uid(), generate_uid()
    _job(settings, jobs, "old-failed", study, shared, end=JobStatus.FAILED, work=tmp_path)
    _job(settings, jobs, "still-running", study, shared, end=None, work=tmp_path)  # needs `shared` in the store
    _job(settings, jobs, "old-failed-2", study, alone, end=JobStatus.FAILED, work=tmp_path)
    _job(settings, jobs, "recent", study, recent, end=JobStatus.FAILED, work=tmp_path)
    store_dir = SeriesStore(settings.store_dir)

    # Nothing has ended 7 days ago yet: nothing goes.
    assert purge_expired(settings).jobs == []
    assert purge_expired(settings.model_copy(update={"retention_days": 0}), now=1e12).jobs == []

    free_before, db_before = free_bytes(tmpfs), _database_bytes(settings)
    # "recent" ended 6.5 days before the purge's clock; the others 8 days before it.
    now = jobs.get("old-failed").updated_at + 8 * DAY
    jobs.mutate("recent", lambda j: j.timeline.__setitem__("failed", now - 6.5 * DAY))
    with caplog.at_level(logging.INFO, logger="service.retention"):
        report = purge_expired(settings, now=now)
    assert sorted(report.jobs) == ["old-failed", "old-failed-2"]
    assert report.series == [alone]
    for job_id in report.jobs:
        assert not (settings.jobs_dir / job_id).exists()
        assert jobs.get(job_id).purged["reason"].startswith("retention")
        assert jobs.get(job_id).status == JobStatus.FAILED  # a field, not a status
    assert store_dir.series_files(study, shared)  # "still-running" needs it
    assert store_dir.series_files(study, alone) == []
    assert job_input_dir(settings, "still-running").exists() and job_output_dir(settings, "recent").exists()
    # 4 outputs and a 3-slice series of 32 KiB each (224 KiB), counted apart from what the
    # job database (on the same tmpfs) grew by while it recorded the purge
    freed = free_bytes(tmpfs) - free_before + (_database_bytes(settings) - db_before)
    assert freed >= 200_000
    # The log and the audit trail name jobs and UIDs, never the patient.
    messages = [r.getMessage() for r in caplog.records]
    assert any("old-failed-2" in m and alone in m for m in messages)
    assert not any(PATIENT in m or PATIENT_ID in m or "RETENTION" in m for m in messages)
    purges = AuditTrail(settings.jobs_db_url).events(kind="purge")
    assert sorted(e["subject"] for e in purges) == ["old-failed", "old-failed-2"]
    assert PATIENT_ID not in repr(purges)
    # Purging again changes nothing.
    assert purge_expired(settings, now=now + 0.25 * DAY).jobs == []  # "recent" is 6.75 days old then

    app = create_app()
    app.dependency_overrides[get_settings] = lambda: settings.model_copy(update={"retention_days": 0})
    with TestClient(app) as client:
        view = client.get("/jobs/old-failed").json()
        assert view["purged"]["reason"].startswith("retention") and view["status"] == "failed"
        r = client.get("/jobs/old-failed/result")
        assert r.status_code == 410 and "retention" in r.json()["detail"]
        assert client.post("/jobs/old-failed/resend").status_code == 410
        assert client.get("/jobs/recent").json()["purged"] is None
        assert client.get("/jobs/recent/result").status_code == 200


def _wait_purged(client: TestClient, job_id: str, timeout: float = 10.0) -> dict | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if purged := client.get(f"/jobs/{job_id}").json()["purged"]:
            return purged
        time.sleep(0.05)
    return None


def test_gateway_purges_at_start_and_periodically(tmpfs, tmp_path):
    """The gateway's lifespan runs the purge once at start, then every SYNTH_RETENTION_CHECK_SECONDS."""
    settings = Settings(data_dir=tmpfs / "data", auth="off", retention_days=0.1 / DAY, min_free_gb=0,
                        retention_check_seconds=3600, broker_url="redis://127.0.0.1:1/0")
    jobs = JobStore(settings.jobs_db_url)
    _job(settings, jobs, "ended-before-start", generate_uid(), generate_uid(), end=JobStatus.FAILED, work=tmp_path)
    time.sleep(0.3)  # it ended 0.3 s ago: past its 0.1 s retention
    app = create_app()
    app.dependency_overrides[get_settings] = lambda: settings
    with TestClient(app) as client:
        assert _wait_purged(client, "ended-before-start")  # the start's purge: the next is an hour away
        assert client.get("/jobs/ended-before-start/result").status_code == 410
    periodic = settings.model_copy(update={"retention_check_seconds": 0.3})
    app.dependency_overrides[get_settings] = lambda: periodic
    with TestClient(app) as client:
        _job(settings, jobs, "ended-while-up", generate_uid(), generate_uid(), end=JobStatus.FAILED, work=tmp_path)
        assert _wait_purged(client, "ended-while-up")
    assert not (settings.jobs_dir / "ended-before-start").exists()
    assert not (settings.jobs_dir / "ended-while-up").exists()


def test_below_min_free_listener_answers_a700_and_gateway_507(tmpfs, tmp_path):
    data = tmpfs / "data"
    settings = Settings(data_dir=data, auth="off", broker_url="redis://127.0.0.1:1/0",
                        min_free_gb=5 / 1024).model_copy(update={"dicom_port": 0, "dicom_host": HOST})  # 5 MiB
    listener = Listener(settings, lambda series: None)
    listener.start()
    app = create_app()
    app.dependency_overrides[get_settings] = lambda: settings
    try:
        study = generate_uid()
        first = _slice(tmp_path / "a.dcm", study, generate_uid(), 1)
        assert int(scu_send(listener.port, first).Status) == 0x0000  # ~7.9 MiB free: above the mark
        filler = tmpfs / "filler"
        filler.write_bytes(b"\0" * (4 << 20))  # ~3.9 MiB free: below 5 MiB, the disk far from full
        series = generate_uid()
        rsp = scu_send(listener.port, _slice(tmp_path / "b.dcm", study, series, 1))
        assert int(rsp.Status) == 0xA700 and "SYNTH_MIN_FREE_GB" in str(rsp.ErrorComment)
        assert not list((data / "store").glob(f"*/{series}/*.dcm"))
        with TestClient(app) as client:
            f = _slice(tmp_path / "c.dcm", study, generate_uid(), 1)
            r = client.post("/synthesize", files=[("files", (f.name, f.read_bytes(), "application/dicom"))])
            assert r.status_code == 507 and "SYNTH_MIN_FREE_GB" in r.json()["detail"], r.text
            boundary = "b0undary"
            body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + f.read_bytes()
                    + f"\r\n--{boundary}--\r\n".encode())
            r = client.post("/dicomweb/studies", content=body, headers={
                "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})
            assert r.status_code == 507 and "SYNTH_MIN_FREE_GB" in r.json()["detail"], r.text
        assert not list((data / "store").glob("*/*/c.dcm"))
        filler.unlink()  # room again: stores again
        assert int(scu_send(listener.port, _slice(tmp_path / "d.dcm", study, series, 2)).Status) == 0x0000
    finally:
        listener.stop()
