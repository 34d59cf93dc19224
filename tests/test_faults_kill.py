"""kill -9 of each worker kind mid-step (classify, synthesize, export), under the runner
with a real redis-server and Orthanc: the runner starts the worker again, the job it was
running resumes under a new message, and ends done once, with exactly one synthetic
series in the PACS."""

from __future__ import annotations

import time

import pytest

from dicom_synth.jobstore import JobStore
from dicom_synth.queueconf import TASK_CLASSIFY, TASK_EXPORT, TASK_SYNTHESIZE
from models.dce.phantom_dicom import write_phantom_series
from tests.faults import all_final, one_synthetic_series_each, record, wait_until
from tests.peers import free_port
from tests.stack import start_stack
from tests.test_poison_and_resend import _gpu_worker as _worker  # the runner's child of that Celery name

pytestmark = pytest.mark.slow

# worker kind -> (its Celery name prefix, the step it runs, the job states of that step)
KINDS = {
    "classify": ("classify@", TASK_CLASSIFY, {"received", "classified"}),
    "synthesize": ("gpu@", TASK_SYNTHESIZE, {"running"}),
    "export": ("export@", TASK_EXPORT, {"exporting"}),
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_worker_killed_mid_step_ends_its_job_done_once(tmp_path, redis_server, orthanc_factory, kind):
    prefix, step, states = KINDS[kind]
    pacs_port = free_port()
    # the export step lasts while the PACS is down (retries); the others while they compute
    orthanc = None if kind == "export" else orthanc_factory(dicom_port=pacs_port)
    stack = start_stack(tmp_path / "svc", broker_url=redis_server.url, pacs=f"ORTHANC@127.0.0.1:{pacs_port}",
                        env={"SYNTH_EXPORT_RETRIES": "60", "SYNTH_EXPORT_BACKOFF_SECONDS": "0.5"})
    store = JobStore(stack.job_db_url)
    try:
        files = write_phantom_series(tmp_path / "t1", seed=1800 + len(kind), n_slices=48 if kind == "classify" else 24,
                                     size=384)
        job_id = stack.post(files).json()["job_id"]
        worker = wait_until(lambda: _worker(stack, prefix), 60, f"the {kind} worker")
        wait_until(lambda: (j := store.get(job_id)).status in states and j.attempts.get(step) == 1,
                   120, f"{step} to start", interval=0.02)
        worker.kill()  # SIGKILL mid-step: the task neither returns nor raises
        worker.wait(10)
        killed_at = time.monotonic()
        mid = store.get(job_id)
        assert mid.attempts.get(step) == 1 and str(mid.status) in states, (mid.status, mid.attempts)  # mid-step
        if orthanc is None:
            orthanc = orthanc_factory(dicom_port=pacs_port)  # the PACS comes up
        (job,) = all_final(stack, 1, timeout=300)
        recovery = time.monotonic() - killed_at
        assert job["status"] == "done", job
        record_after = store.get(job_id)
        assert record_after.attempts == {} and record_after.timeline.get("done")
        lost, duplicated = one_synthetic_series_each(orthanc, [files])
        assert _worker(stack, prefix) is not None and _worker(stack, prefix).pid != worker.pid  # restarted
        record(f"kill -9 of the {kind} worker", f"SIGKILL mid-{step} ({mid.status}, {len(files)} slices)",
               [job], lost, duplicated, recovery)
    finally:
        stack.stop()
