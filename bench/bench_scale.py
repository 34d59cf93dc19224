"""Jobs per hour with one synthesis worker process and with two (issue 14 item 4).

Each worker is its own process group, as a node would run it (`celery -A worker.app worker
-Q gpu --pool solo --concurrency 1 -n gpu@nodeK`, ONNX Runtime intra-op threads 1 by
SYNTH_ONNX_THREADS, BLAS threads 1); they share only a real redis-server, one PostgreSQL
job store and the data directory. The same series are submitted for each round through
the listener's intake (`service.intake.accept_series`) and classified by one classify
worker before the synthesis workers start, so the round times synthesis alone: from the
moment every worker is up and takes the gpu queue (Celery's add_consumer) to the
last job's `done` (the job timelines in the store), each process's model loading
included. No PACS: a job ends `done` when its series is written.

    nice -n 10 .venv/bin/python bench/bench_scale.py [--series 16] [--slices 12] [--size 384]
        [--workers 1 2] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from models.dce.phantom_dicom import write_phantom_series  # noqa: E402
from tests.peers import PEER_ENV, start_postgres, start_redis  # noqa: E402

STANDBY = "bench-standby"  # a queue nothing is sent to
ONE_THREAD = {"SYNTH_ONNX_THREADS": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
              "MKL_NUM_THREADS": "1"}


def celery_worker(queue: str, name: str, env: dict[str, str], log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "-Q", queue, "--pool", "solo",
           "--concurrency", "1", "-n", name, "--loglevel", "INFO"]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def worker_cpu(workers: list[subprocess.Popen]) -> float:
    """User + system CPU seconds the worker processes used so far."""
    return sum(sum(psutil.Process(w.pid).cpu_times()[:2]) for w in workers)


def celery_control():
    from service.queue import app

    return app.control


def stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def wait_all(store, job_ids: list[str], statuses: set[str], timeout: float) -> list:
    """One query a second (this poller's reads stay out of the service's figures)."""
    deadline = time.monotonic() + timeout
    wanted = set(job_ids)
    while True:
        jobs = [j for j in store.recent(limit=len(job_ids) + 64) if j.job_id in wanted]
        if all(str(j.status) in statuses for j in jobs):
            return jobs
        if time.monotonic() > deadline:
            raise SystemExit(f"not all {statuses} within {timeout} s: {[str(j.status) for j in jobs]}")
        time.sleep(1.0)


def _spin(n: int) -> int:
    s = 0
    for i in range(n):
        s += i * i
    return s


def cpu_ceiling(n: int = 5_000_000) -> float:
    """What this machine gives two processes against one, now: the same pure-Python loop
    in one process, then in two at once (2.0 on two idle cores; less when the cores are
    hyperthreads or shared)."""
    from multiprocessing import Pool

    t = time.perf_counter()
    _spin(n)
    one = time.perf_counter() - t
    with Pool(2) as pool:
        t = time.perf_counter()
        pool.map(_spin, [n, n])
        two = time.perf_counter() - t
    return 2 * one / two


def pg_writes(pg, database: str) -> tuple[int, int]:
    """(committed transactions, rows inserted, updated or deleted) in the database so far;
    PostgreSQL publishes its statistics within a second."""
    time.sleep(1.5)
    with pg._connect(database) as conn:
        commits = conn.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = %s",
                               (database,)).fetchone()[0]
        rows = conn.execute("SELECT coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0) "
                            "FROM pg_stat_user_tables").fetchone()[0]
    return int(commits), int(rows)


def redis_commands(redis_url: str) -> int:
    import redis

    return int(redis.Redis.from_url(redis_url).info("stats")["total_commands_processed"])


def tree_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def one_round(n_workers: int, series: list[list[Path]], env: dict[str, str], work: Path, pg) -> dict:
    from dicom_synth.jobstore import JobStore
    from dicom_synth.settings import get_settings, job_input_dir, job_output_dir
    from service.intake import accept_series

    settings = get_settings()
    store = JobStore(settings.jobs_db_url)
    (commits0, rows0), commands0 = pg_writes(pg, "bench"), redis_commands(env["SYNTH_BROKER_URL"])
    job_ids = []
    for k, files in enumerate(series):
        copies = work / f"round{n_workers}" / f"s{k}"
        copies.mkdir(parents=True)
        for f in files:
            shutil.copy(f, copies / f.name)
        from pydicom import dcmread

        ds = dcmread(files[0], stop_before_pixels=True)
        job = accept_series(settings, study_instance_uid=ds.StudyInstanceUID,
                            series_instance_uid=ds.SeriesInstanceUID, files=sorted(copies.glob("*.dcm")),
                            origin="bench")
        job_ids.append(job.job_id)
    wait_all(store, job_ids, {"queued"}, 600)  # classified; now only synthesis is left
    names = [f"gpu@node{k}" for k in range(n_workers)]
    # Each starts on an empty queue; all take the gpu queue at once when all are up.
    workers = [celery_worker(STANDBY, name, {**env, "SYNTH_NODE_NAME": name.partition("@")[2]},
                             work / f"{name}.log") for name in names]
    try:
        control = celery_control()
        deadline = time.monotonic() + 300
        while len(control.ping(destination=names, timeout=1.0)) < len(names):
            if time.monotonic() > deadline or any(w.poll() is not None for w in workers):
                raise SystemExit(f"workers did not come up; see {work}")
        load_before = os.getloadavg()[0]
        cpu0 = worker_cpu(workers)  # after start-up: what the jobs took from here on
        t_start = time.time()
        control.add_consumer("gpu", destination=names, reply=True)
        jobs = wait_all(store, job_ids, {"done", "failed", "skipped"}, 3600)
        cpu = worker_cpu(workers) - cpu0
    finally:
        stop(workers)
    bad = [(j.job_id, str(j.status), j.error) for j in jobs if str(j.status) != "done"]
    if bad:
        raise SystemExit(f"jobs did not end done: {bad}")
    last = max(j.timeline["done"] for j in jobs)
    (commits, rows), commands = pg_writes(pg, "bench"), redis_commands(env["SYNTH_BROKER_URL"]) - commands0
    commits, rows = commits - commits0, rows - rows0
    bytes_in = sum(tree_bytes(job_input_dir(settings, j)) for j in job_ids)
    bytes_out = sum(tree_bytes(job_output_dir(settings, j)) for j in job_ids)
    per_node: dict[str, int] = {}
    for j in jobs:
        per_node[j.claimed_by or "?"] = per_node.get(j.claimed_by or "?", 0) + 1
    return {"workers": n_workers, "jobs": len(jobs), "seconds": last - t_start,
            "jobs_per_hour": len(jobs) * 3600 / (last - t_start),
            "cpu_seconds_per_job": cpu / len(jobs),
            "mean_job_seconds": sum(j.timeline["done"] - j.timeline["running"] for j in jobs) / len(jobs),
            "per_worker": per_node, "load_before": load_before, "load_after": os.getloadavg()[0],
            "pg_commits_per_job": commits / len(jobs), "pg_rows_per_job": rows / len(jobs),
            "redis_commands_per_job": commands / len(jobs),
            "input_mb_per_job": bytes_in / len(jobs) / 1e6, "output_mb_per_job": bytes_out / len(jobs) / 1e6}


def capacity(env: dict[str, str], work: Path, n: int = 2000) -> dict:
    """What the shared parts take here, one client process: PostgreSQL job-state
    transactions (a locked read-modify-write of one row, as every state change is),
    Celery messages sent to Redis, and sequential writes with fsync to the store's disk."""
    from concurrent.futures import ThreadPoolExecutor

    from dicom_synth.jobstate import new_job
    from dicom_synth.jobstore import JobStore
    from service.queue import app

    store = JobStore(env["SYNTH_DATABASE_URL"])
    for k in range(4):
        store.create(new_job(job_id=f"cap{k}", source_series_uid=f"1.2.{k}", study_instance_uid="1.2",
                             origin="bench"))

    def touch(job_id: str, count: int) -> None:
        for i in range(count):
            store.mutate(job_id, lambda job, i=i: setattr(job, "progress", i / count))

    t = time.perf_counter()
    touch("cap0", n)
    serial = n / (time.perf_counter() - t)
    t = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(touch, [f"cap{k}" for k in range(4)], [n // 4] * 4))
    threaded = n / (time.perf_counter() - t)

    t = time.perf_counter()
    for _ in range(n):
        app.send_task("bench.nothing", args=["x" * 32], queue=STANDBY)
    sent = n / (time.perf_counter() - t)
    app.control.purge()

    chunk, total = os.urandom(4 << 20), 256 << 20
    target = work / "data" / "bench-write.bin"
    t = time.perf_counter()
    with open(target, "wb") as out:
        for _ in range(total // len(chunk)):
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    write_mb_s = total / 1e6 / (time.perf_counter() - t)
    target.unlink()
    return {"pg_tx_s": serial, "pg_tx_s_4threads": threaded, "celery_msgs_s": sent, "store_write_mb_s": write_mb_s}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--series", type=int, default=16)
    ap.add_argument("--slices", type=int, default=12)
    ap.add_argument("--size", type=int, default=384)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeat", type=int, default=1, help="rounds of --workers, interleaved; medians compared")
    ap.add_argument("--capacity", action="store_true", help="also time PostgreSQL, Redis and the store's disk")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    redis = start_redis(work / "redis")
    pg = start_postgres()
    classify = None
    try:
        env = {k: v for k, v in PEER_ENV.items() if not k.startswith("SYNTH_") or k == "SYNTH_MODELS_DIR"}
        env.update(SYNTH_DATA_DIR=str(work / "data"), SYNTH_BROKER_URL=redis.url,
                   SYNTH_DATABASE_URL=pg.create_database("bench"), **ONE_THREAD)
        os.environ.update(env)
        series = [write_phantom_series(work / "src" / f"t1-{k}", seed=1400 + k, n_slices=args.slices,
                                       size=args.size) for k in range(args.series)]
        classify = celery_worker("default", "classify@bench", {**env, "SYNTH_NODE_NAME": "bench"},
                                 work / "classify.log")
        print(f"{args.series} series of {args.slices} slices {args.size}x{args.size}, "
              f"{os.cpu_count()} cores, load average {os.getloadavg()}", flush=True)
        results: dict[int, list[dict]] = {n: [] for n in args.workers}
        for rep in range(args.repeat):
            for n in args.workers:
                print(f"cpu ceiling (pure Python, 2 processes vs 1): {cpu_ceiling():.2f}x", flush=True)
                r = one_round(n, series, env, work / f"rep{rep}", pg)
                results[n].append(r)
                print(f"{n} worker process(es): {r['jobs']} jobs in {r['seconds']:.1f} s = "
                      f"{r['jobs_per_hour']:.0f} jobs/h (a job {r['mean_job_seconds']:.2f} s, "
                      f"{r['cpu_seconds_per_job']:.2f} s of worker CPU); "
                      f"per worker {r['per_worker']}; "
                      f"load average {r['load_before']:.2f} -> {r['load_after']:.2f}", flush=True)
                print(f"  per job: {r['pg_rows_per_job']:.1f} PostgreSQL row writes in "
                      f"{r['pg_commits_per_job']:.1f} commits (reads included), "
                      f"{r['redis_commands_per_job']:.0f} Redis commands (idle polling included), "
                      f"{r['input_mb_per_job']:.2f} MB in, {r['output_mb_per_job']:.2f} MB out", flush=True)
        if args.capacity:
            c = capacity(env, work)
            print(f"capacity, one client: PostgreSQL {c['pg_tx_s']:.0f} state changes/s "
                  f"({c['pg_tx_s_4threads']:.0f}/s from 4 threads on 4 jobs), Redis {c['celery_msgs_s']:.0f} "
                  f"Celery messages sent/s, store disk {c['store_write_mb_s']:.0f} MB/s written (fsync)")
        median = {n: statistics.median(r["jobs_per_hour"] for r in rs) for n, rs in results.items()}
        base = args.workers[0]
        for n in args.workers[1:]:
            print(f"{n} vs {base} worker process(es), median of {args.repeat}: "
                  f"{median[n]:.0f} / {median[base]:.0f} jobs/h = {median[n] / median[base]:.2f}x")
    finally:
        if classify is not None:
            stop([classify])
        pg.stop()
        redis.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
