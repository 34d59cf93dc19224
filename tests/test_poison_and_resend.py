"""Faults around one job, end to end with real parts (the service as `make run` starts it,
redis-server, Orthanc, DCMTK storescu): a DICOM re-send of a failed series makes a new
job; a superseded job is never exported; a step that kills its worker twice fails its job;
an export whose worker is killed mid-export is resumed and delivered once."""

from __future__ import annotations

import time

import psutil
import pytest
from pydicom import dcmread

from dicom_synth.jobstore import JobStore
from dicom_synth.queueconf import TASK_EXPORT, TASK_SYNTHESIZE
from models.dce.phantom_dicom import write_phantom_series
from tests.peers import free_port, storescu
from tests.stack import ServiceStack, start_stack

pytestmark = pytest.mark.slow


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_dicom_resend_of_a_failed_series_makes_a_new_job_and_the_superseded_one_is_never_exported(
    tmp_path, redis_server, orthanc_factory
):
    dead_port = free_port()
    stack = start_stack(tmp_path / "svc", broker_url=redis_server.url, pacs=f"ORTHANC@127.0.0.1:{dead_port}")
    try:
        files = write_phantom_series(tmp_path / "t1", seed=931, n_slices=4, size=384)
        storescu(files, "127.0.0.1", stack.dicom_port, stack.ae_title)
        (first,) = _wait(stack.jobs, 60, "the first job")
        first = stack.wait_job(first["job_id"])
        assert first["status"] == "failed" and "export" in first["error"], first

        storescu(files, "127.0.0.1", stack.dicom_port, stack.ae_title)  # the PACS sends the series again
        jobs = _wait(lambda: [j for j in stack.jobs() if j["job_id"] != first["job_id"]], 60, "a second job")
        second = stack.wait_job(jobs[0]["job_id"])
        assert len(stack.jobs()) == 2
        assert second["supersedes"] == first["job_id"]
        assert stack.job(first["job_id"])["superseded_by"] == second["job_id"]
        assert second["status"] == "failed" and second["output_series_uids"], second  # the PACS is still down

        # The PACS comes back. Resending the superseded job sends nothing; resending its successor delivers.
        orthanc = orthanc_factory(dicom_port=dead_port)
        with stack.client() as c:
            assert c.post(f"/jobs/{first['job_id']}/resend").status_code == 202
        old = stack.wait_job(first["job_id"], statuses=("done", "failed", "skipped"))
        assert old["status"] == "skipped" and "superseded by job " + second["job_id"] in old["error"], old
        assert orthanc.instance_count() == 0
        with stack.client() as c:
            assert c.post(f"/jobs/{second['job_id']}/resend").status_code == 202
        assert stack.wait_job(second["job_id"])["status"] == "done"
        assert orthanc.instance_count() == len(files)

        storescu(files, "127.0.0.1", stack.dicom_port, stack.ae_title)  # a re-send of a done series: no new job
        time.sleep(2.0)
        assert len(stack.jobs()) == 2
    finally:
        stack.stop()


def _gpu_worker(stack: ServiceStack, name: str = "gpu@") -> psutil.Process | None:
    for p in psutil.Process(stack.proc.pid).children(recursive=True):
        try:
            if any(arg.startswith(name) for arg in p.cmdline()):
                return p
        except psutil.NoSuchProcess:
            continue
    return None


def test_a_step_that_kills_its_worker_twice_fails_the_job_and_is_not_requeued(tmp_path, redis_server):
    stack = start_stack(tmp_path / "svc", broker_url=redis_server.url)
    store = JobStore(stack.job_db_url)
    try:
        files = write_phantom_series(tmp_path / "t1", seed=932, n_slices=24, size=384)
        job_id = stack.post(files).json()["job_id"]
        killed: set[int] = set()
        for start in (1, 2):
            # the synthesis step has started for the `start`-th time, in a worker not yet killed
            _wait(lambda n=start: store.get(job_id).attempts.get(TASK_SYNTHESIZE) == n
                  and store.get(job_id).status == "running", 90, f"synthesis start {start}")
            worker = _wait(lambda: (w := _gpu_worker(stack)) and w.pid not in killed and w, 30, "the gpu worker")
            worker.kill()  # SIGKILL, mid-task: the task neither returns nor raises
            killed.add(worker.pid)
        job = stack.wait_job(job_id, timeout=90)
        assert job["status"] == "failed", job
        assert TASK_SYNTHESIZE in job["error"] and "2 times" in job["error"] and "killed its worker" in job["error"]
        # the worker came back, the service is up, and the job is not started a third time
        _wait(lambda: _gpu_worker(stack) is not None and _gpu_worker(stack).pid not in killed, 30, "a new worker")
        time.sleep(3.0)
        record = store.get(job_id)
        assert record.status == "failed" and record.attempts[TASK_SYNTHESIZE] == 2
        with stack.client() as c:
            assert c.get("/healthz").status_code == 200
    finally:
        stack.stop()


def test_an_export_killed_mid_export_is_resumed_and_delivered_once(tmp_path, redis_server, orthanc_factory):
    dead_port = free_port()
    stack = start_stack(tmp_path / "svc", broker_url=redis_server.url, pacs=f"ORTHANC@127.0.0.1:{dead_port}",
                        env={"SYNTH_EXPORT_RETRIES": "30", "SYNTH_EXPORT_BACKOFF_SECONDS": "0.5"})
    store = JobStore(stack.job_db_url)
    try:
        files = write_phantom_series(tmp_path / "t1", seed=933, n_slices=4, size=384)
        job_id = stack.post(files).json()["job_id"]
        # the export has started and is retrying against the dead PACS
        _wait(lambda: store.get(job_id).attempts.get(TASK_EXPORT) == 1, 90, "the export to start")
        worker = _gpu_worker(stack, "export@")
        worker.kill()
        worker.wait(5)
        assert store.get(job_id).status == "exporting"
        orthanc = orthanc_factory(dicom_port=dead_port)  # the PACS comes up
        job = stack.wait_job(job_id, timeout=90)
        assert job["status"] == "done", job
        assert orthanc.instance_count() == len(files)
        assert len(orthanc.series_in_study(dcmread(files[0]).StudyInstanceUID)) == 1
    finally:
        stack.stop()
