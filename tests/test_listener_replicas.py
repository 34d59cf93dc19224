"""Listener replicas and whole-series completion with real processes and peers: two
`service.listener_main` replicas on two ports sharing a real redis-server and one store
path, DCMTK storescu as the modality (issue 14 item 3, issue 15 item 4)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pydicom
import pytest

from dicom_synth.jobstate import new_job
from dicom_synth.jobstore import JobStore
from models.dce.phantom_dicom import write_phantom_series
from service.completion import MARKER, CompletedSeries, read_marker_record
from service.intake import _mark_superseded
from tests.peers import LOOPBACK, PEER_ENV, PeerError, RedisPeer, _port_open, _tail, free_port, storescu
from tests.stack import REPO, start_stack
from tests.test_listener import tiny_fs  # noqa: F401  (a fixture)

pytestmark = pytest.mark.slow


def start_listener_replica(workdir: Path, env: dict[str, str]) -> tuple[subprocess.Popen, int, Path]:
    """One more listener process (as a second node would run it) beside a stack."""
    port = free_port()
    log = workdir / f"listener-{port}.log"
    full_env = {**env, "SYNTH_DICOM_PORT": str(port)}
    proc = subprocess.Popen([sys.executable, "-m", "service.listener_main"], cwd=REPO, env=full_env,
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 30
    while not _port_open(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise PeerError(f"listener replica did not start: {_tail(log)}")
        time.sleep(0.1)
    return proc, port, log


def stack_env(stack, redis_url: str) -> dict[str, str]:
    """What the stack's children see, so that a replica shares its Redis, store and jobs."""
    env = {k: v for k, v in PEER_ENV.items() if not k.startswith("SYNTH_") or k == "SYNTH_MODELS_DIR"}
    env.update(SYNTH_DATA_DIR=str(stack.data_dir.resolve()), SYNTH_BROKER_URL=redis_url,
               SYNTH_DICOM_HOST=LOOPBACK, SYNTH_SERIES_QUIET_SECONDS="20")
    return env


def test_a_series_split_over_two_listener_replicas_is_one_job_that_ends_done(
        tmp_path: Path, redis_server: RedisPeer) -> None:
    stack = start_stack(tmp_path / "svc", broker_url=redis_server.url,
                        env={"SYNTH_SERIES_QUIET_SECONDS": "20"})
    replica, replica_port, replica_log = start_listener_replica(tmp_path, stack_env(stack, redis_server.url))
    try:
        files = write_phantom_series(tmp_path / "t1", seed=907, n_slices=8, size=384)
        # Half to each replica, one after the other: each alone holds 4 of the 8 slices the
        # headers declare, and would wait the 20 s quiet period; together they are whole.
        storescu(files[:4], LOOPBACK, stack.dicom_port, stack.ae_title)
        storescu(files[4:], LOOPBACK, replica_port, stack.ae_title)
        t_sent = time.monotonic()
        deadline = t_sent + 15
        while not stack.jobs() and time.monotonic() < deadline:
            time.sleep(0.05)
        t_job = time.monotonic() - t_sent
        jobs = stack.jobs()
        assert len(jobs) == 1, (jobs, _tail(replica_log), _tail(stack.log))
        assert t_job < 5, f"announced {t_job:.1f} s after the last association: the quiet period, not the union"
        print(f"second half's association end -> one job: {t_job:.2f} s")
        job = stack.wait_job(jobs[0]["job_id"])
        assert job["status"] == "done", job
        time.sleep(1.0)  # neither replica announces anything more
        assert [j["job_id"] for j in stack.jobs()] == [job["job_id"]]
        inputs = sorted((stack.data_dir / "jobs" / job["job_id"] / "input").glob("*.dcm"))
        assert len(inputs) == 8
        study, series = pydicom.dcmread(files[0]).StudyInstanceUID, pydicom.dcmread(files[0]).SeriesInstanceUID
        marker = read_marker_record(stack.data_dir / "store" / study / series)
        assert marker is not None and marker["job_id"] == job["job_id"] and len(marker["sop_instance_uids"]) == 8
    finally:
        replica.terminate()
        replica.wait(15)
        stack.stop()


# --- whole-series completion over the wire -------------------------------------------------


def test_37_of_48_then_the_rest_later_is_one_whole_series(tmp_path: Path) -> None:
    """The headers declare 48 (ImagesInAcquisition): 37 contiguous, evenly spaced slices
    are not announced after the grace; the rest, 3 s later (within a 5 s quiet period; the
    issue's 8 s is within the default 30 s), completes one series of 48."""
    from dicom_synth.settings import Settings
    from service.listener import Listener

    files = write_phantom_series(tmp_path / "t1", seed=911, n_slices=48, size=32)
    done: list[tuple[float, CompletedSeries]] = []
    settings = Settings(data_dir=tmp_path / "data").model_copy(update={
        "dicom_port": 0, "dicom_host": LOOPBACK, "series_quiet_seconds": 5.0, "series_grace_seconds": 0.3})
    listener = Listener(settings, lambda c: done.append((time.monotonic(), c)))
    listener.start()
    try:
        storescu(files[:37], LOOPBACK, listener.port, settings.ae_title)
        time.sleep(3.0)
        assert done == [], "37 of 48 slices were announced"
        storescu(files[37:], LOOPBACK, listener.port, settings.ae_title)
        t_end = time.monotonic()
        deadline = t_end + 5
        while not done and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.5)
    finally:
        listener.stop()
    ((t_done, c),) = done
    assert len(c.files) == 48 and c.reason == "images-in-acquisition" and c.supersedes is None
    assert t_done - t_end < 1.0


def test_late_instances_after_a_job_make_one_that_supersedes_it(tmp_path: Path) -> None:
    """The rest of a series after the quiet period: a second announcement with every file,
    naming the first job; that job's record says it was superseded (its status stays)."""
    from dicom_synth.settings import Settings
    from service.listener import Listener

    files = write_phantom_series(tmp_path / "t1", seed=913, n_slices=12, size=32)
    store = JobStore(f"sqlite:///{tmp_path / 'jobs.sqlite3'}")
    done: list[CompletedSeries] = []

    def on_complete(c: CompletedSeries) -> str:
        job = store.create(new_job(job_id=f"job{len(done) + 1}", source_series_uid=c.series_instance_uid,
                                   study_instance_uid=c.study_instance_uid, origin="dicom", supersedes=c.supersedes))
        if c.supersedes:
            _mark_superseded(store, c.supersedes, job.job_id)
        done.append(c)
        return job.job_id

    settings = Settings(data_dir=tmp_path / "data").model_copy(update={
        "dicom_port": 0, "dicom_host": LOOPBACK, "series_quiet_seconds": 1.0})
    listener = Listener(settings, on_complete)
    listener.start()
    try:
        storescu(files[:9], LOOPBACK, listener.port, settings.ae_title)
        deadline = time.monotonic() + 5
        while not done and time.monotonic() < deadline:
            time.sleep(0.02)
        storescu(files[9:], LOOPBACK, listener.port, settings.ae_title)
        deadline = time.monotonic() + 5
        while len(done) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        listener.stop()
    first, second = done
    assert len(first.files) == 9 and first.reason == "quiet"
    assert len(second.files) == 12 and second.supersedes == "job1" and "late instances" in second.reason
    assert store.get("job1").superseded_by == "job2" and store.get("job2").supersedes == "job1"
    assert store.get("job1").public()["superseded_by"] == "job2"
    series_dir = settings.store_dir / first.study_instance_uid / first.series_instance_uid
    assert read_marker_record(series_dir)["job_id"] == "job2" and (series_dir / MARKER).exists()


def test_concurrent_halves_on_two_replica_processes_announce_once(tmp_path: Path, redis_server: RedisPeer) -> None:
    """Two listener processes (no workers): both halves sent at once, each to its replica;
    the job store receives one job with all 12 instances."""
    data = tmp_path / "var"
    env = {k: v for k, v in PEER_ENV.items() if not k.startswith("SYNTH_")}
    env.update(SYNTH_DATA_DIR=str(data), SYNTH_BROKER_URL=redis_server.url, SYNTH_DICOM_HOST=LOOPBACK,
               SYNTH_SERIES_QUIET_SECONDS="20")
    with ThreadPoolExecutor(2) as pool:  # start both at once
        replicas = list(pool.map(lambda _: start_listener_replica(tmp_path, env), range(2)))
    try:
        files = write_phantom_series(tmp_path / "t1", seed=915, n_slices=12, size=32)
        halves = [files[0::2], files[1::2]]  # odd and even slices: neither half is whole alone
        threads = [threading.Thread(target=storescu, args=(half, LOOPBACK, port, "SYNTH"))
                   for half, (_, port, _) in zip(halves, replicas, strict=True)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        store = JobStore(f"sqlite:///{data / 'jobs.sqlite3'}")
        deadline = time.monotonic() + 5
        while not store.recent() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)
        jobs = store.recent()
        assert len(jobs) == 1, [_tail(log) for _, _, log in replicas]
        assert len(list((data / "jobs" / jobs[0].job_id / "input").glob("*.dcm"))) == 12
    finally:
        for proc, _, _ in replicas:
            proc.terminate()
            proc.wait(15)


def test_a_series_with_refused_instances_waits_for_quiet(tmp_path: Path, tiny_fs: Path) -> None:  # noqa: F811
    """A full store answers 0xA700 after some slices of one association: the stored ones
    look contiguous, yet they are announced after the quiet period, not the grace."""
    from dicom_synth.settings import Settings
    from service.listener import Listener
    from tests.test_listener import make_series

    done: list[tuple[float, CompletedSeries]] = []
    settings = Settings(data_dir=tiny_fs / "data", min_free_gb=0).model_copy(update={
        "dicom_port": 0, "dicom_host": LOOPBACK, "series_quiet_seconds": 1.5, "series_grace_seconds": 0.3})
    listener = Listener(settings, lambda c: done.append((time.monotonic(), c)))
    listener.start()
    try:
        files = make_series(tmp_path / "s", 8, size=256)  # 8 x 128 KiB into 512 KiB
        r = subprocess.run(["storescu", "-aec", "SYNTH", LOOPBACK, str(listener.port), *map(str, files)],
                           env=PEER_ENV, capture_output=True, text=True, timeout=60)
        t_end = time.monotonic()
        assert "0xa700" in (r.stdout + r.stderr).lower() or r.returncode != 0, r.stderr
        deadline = t_end + 5
        while not done and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        listener.stop()
    ((t_done, c),) = done
    assert 0 < len(c.files) < 8 and c.reason == "quiet; instances were refused"
    assert t_done - t_end >= 1.2
