"""Two nodes as separate process groups (issue 14 item 4): each the whole service as
`make run` starts it (its own runner, gateway, listener and Celery workers, named
`<kind>@nodeA` / `<kind>@nodeB`), sharing only a real redis-server, one PostgreSQL job
store and the data directory (series store, outputs); Orthanc is the PACS."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pydicom
import pytest

from dicom_synth.jobstore import JobStore
from models.dce.phantom_dicom import write_phantom_series
from tests.faults import one_synthetic_series_each, wait_until
from tests.peers import LOOPBACK, RedisPeer, _tail, storescu
from tests.stack import ServiceStack, start_node

pytestmark = [pytest.mark.slow, pytest.mark.parametrize("job_db_url", ["postgresql"], indirect=True)]


def _children(node: ServiceStack, name: str) -> dict:
    """The node's runner's children, as it wrote them (service.children, one file per node)."""
    return json.loads((node.data_dir / f"children-{name}.json").read_text())["children"]


def test_a_series_split_over_two_nodes_listeners_is_one_job_that_ends_done(
        tmp_path: Path, redis_server: RedisPeer, job_db_url: str) -> None:
    shared = tmp_path / "shared"
    env = {"SYNTH_SERIES_QUIET_SECONDS": "20"}  # each half alone would wait this long
    a = start_node(tmp_path / "a", "nodeA", data_dir=shared, broker_url=redis_server.url,
                   database_url=job_db_url, env=env)
    b = None
    try:
        b = start_node(tmp_path / "b", "nodeB", data_dir=shared, broker_url=redis_server.url,
                       database_url=job_db_url, env=env)
        files = write_phantom_series(tmp_path / "t1", seed=931, n_slices=8, size=384)
        storescu(files[:4], LOOPBACK, a.dicom_port, a.ae_title)  # half to node A's listener,
        storescu(files[4:], LOOPBACK, b.dicom_port, b.ae_title)  # half to node B's
        t_sent = time.monotonic()
        jobs = wait_until(b.jobs, 15, "one job")
        print(f"second half's association end -> one job: {time.monotonic() - t_sent:.2f} s")
        job = b.wait_job(jobs[0]["job_id"])
        assert job["status"] == "done", job
        time.sleep(1.0)  # neither node announces anything more
        assert [j["job_id"] for j in a.jobs()] == [j["job_id"] for j in b.jobs()] == [job["job_id"]]
        assert len(list((shared / "jobs" / job["job_id"] / "input").glob("*.dcm"))) == 8
        record = JobStore(job_db_url).get(job["job_id"])
        assert record.claimed_by in ("gpu@nodeA", "gpu@nodeB"), record.claimed_by
    finally:
        for node in (b, a):
            if node is not None:
                node.stop()


def test_kill_9_of_a_nodes_worker_mid_job_ends_it_done_once_on_the_other_node(
        tmp_path: Path, redis_server: RedisPeer, job_db_url: str, orthanc_factory) -> None:
    """Node A's synthesis worker is held mid-job (SIGSTOP, so the test does not race the
    model); node B starts meanwhile and its runner leaves A's job alone (per-node resume);
    then node A dies by kill -9, its worker first. B's stuck-job sweep takes the job over
    after the synthesize deadline; it ends done once, synthesized and exported by node B:
    one synthetic series in Orthanc, one instance per source slice."""
    orthanc = orthanc_factory()
    pacs = f"{orthanc.aet}@{LOOPBACK}:{orthanc.dicom_port}"
    shared = tmp_path / "shared"
    store = JobStore(job_db_url)
    a = start_node(tmp_path / "a", "nodeA", data_dir=shared, broker_url=redis_server.url,
                   database_url=job_db_url, pacs=pacs)
    b: ServiceStack | None = None
    started: list[ServiceStack] = []
    starting = threading.Thread(target=lambda: started.append(start_node(
        tmp_path / "b", "nodeB", data_dir=shared, broker_url=redis_server.url, database_url=job_db_url,
        pacs=pacs, env={"SYNTH_SYNTHESIZE_DEADLINE_SECONDS": "15", "SYNTH_STUCK_CHECK_SECONDS": "1"})))
    try:
        files = write_phantom_series(tmp_path / "t1", seed=933, n_slices=24, size=384)
        job_id = a.post(files).json()["job_id"]
        wait_until(lambda: (j := store.get(job_id)).status == "running" and j.claimed_by == "gpu@nodeA"
                   and j.progress > 0.05, 120, "the job running on node A")
        gpu_a = _children(a, "nodeA")["gpu-worker"]["pid"]
        os.kill(gpu_a, signal.SIGSTOP)  # mid-job, and held there
        held = store.get(job_id)
        assert held.status == "running", held.status

        # Node B starts while node A runs the job: B's runner must not requeue it.
        starting.start()
        b_log = tmp_path / "b" / "service.log"
        wait_until(lambda: b_log.exists() and "serving:" in b_log.read_text(errors="replace"),
                   90, "node B's runner starting its children")
        after = store.get(job_id)  # B's resume ran before it started its children
        assert (after.status, after.claimed_by, after.updated_at) == ("running", "gpu@nodeA", held.updated_at), \
            _tail(b_log)
        assert f"resuming job {job_id}" not in b_log.read_text(errors="replace")

        os.kill(gpu_a, signal.SIGKILL)  # kill -9 of node A's synthesis worker, mid-job,
        a.crash()  # and of everything else of node A: it does not come back
        t_killed = time.time()
        starting.join(120)
        (b,) = started
        job = b.wait_job(job_id, timeout=240)
        assert job["status"] == "done", (job["error"], _tail(b_log, 4000))
        record = store.get(job_id)
        assert record.claimed_by == "export@nodeB", record.claimed_by
        assert record.timeline["running"] > t_killed  # started again, by node B
        log_b = b_log.read_text(errors="replace")
        assert f"job {job_id} is running with no change" in log_b  # B's sweep took it over

        assert one_synthetic_series_each(orthanc, [files]) == (0, 0)  # nothing lost, nothing twice
        (series,) = orthanc.series_in_study(pydicom.dcmread(files[0]).StudyInstanceUID)
        assert series["MainDicomTags"]["SeriesInstanceUID"] == job["output_series_uids"][0]
        time.sleep(1.0)
        assert [j["job_id"] for j in b.jobs()] == [job_id] and b.job(job_id)["status"] == "done"
    finally:
        if starting.is_alive():
            starting.join(120)
        for node in started:
            node.stop()
        a.crash()


def test_the_compose_sweeper_takes_over_a_dead_nodes_job(tmp_path: Path, redis_server: RedisPeer,
                                                         job_db_url: str) -> None:
    """`python -m service.sweeper` (compose's housekeeping, no runner): a job left running
    by a node that is gone is put back on the gpu queue once its deadline passed."""
    import subprocess
    import sys

    import redis

    from dicom_synth.domain import JobStatus as S
    from dicom_synth.jobstate import advance, new_job
    from tests.peers import PEER_ENV
    from tests.stack import REPO

    store = JobStore(job_db_url)
    store.create(new_job(job_id="orphan", source_series_uid="1.2.3", study_instance_uid="1.2", origin="http"))
    for to in (S.CLASSIFIED, S.QUEUED):
        advance(store, "orphan", to)
    advance(store, "orphan", S.RUNNING, claimed_by="gpu@gone", task="dce_phase1")
    env = {k: v for k, v in PEER_ENV.items() if not k.startswith("SYNTH_")}
    env.update(SYNTH_DATA_DIR=str(tmp_path / "var"), SYNTH_BROKER_URL=redis_server.url,
               SYNTH_DATABASE_URL=job_db_url, SYNTH_SYNTHESIZE_DEADLINE_SECONDS="1", SYNTH_STUCK_CHECK_SECONDS="0.3")
    log = tmp_path / "sweeper.log"
    proc = subprocess.Popen([sys.executable, "-m", "service.sweeper"], cwd=REPO, env=env,
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    try:
        gpu_queue = redis.Redis.from_url(redis_server.url)
        messages = wait_until(lambda: gpu_queue.lrange("gpu", 0, -1), 60, "a message on the gpu queue")
        assert all(b"orphan" in m for m in messages), (messages, _tail(log))
        assert store.get("orphan").status == "queued"
    finally:
        proc.terminate()
        proc.wait(15)
