"""Checks of what the service depends on, each a plain function that answers
`{"ok": bool, ...}` and never raises: the broker, the job database, the series store and
its free disk, the model cards, the runner's children, the workers online per queue
(Celery inspect, short timeout) and the PACS (C-ECHO, or a DICOMweb QIDO-RS ping).

`GET /healthz` runs the first ones on every call; the dashboard's health page runs them
all through `cached`, so a page reload within CACHE_SECONDS costs nothing and shows when
each check last ran.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from sqlalchemy import text

from dicom_synth.database import current_revision, engine_for
from dicom_synth.domain import PacsAddress
from dicom_synth.queueconf import QUEUE_DEFAULT, QUEUE_EXPORT, QUEUE_GPU
from dicom_synth.registry import known_tasks, load_card
from dicom_synth.settings import Settings
from service.children import read_status

CACHE_SECONDS = 5.0
NETWORK_TIMEOUT = 2.0
QUEUES = (QUEUE_DEFAULT, QUEUE_GPU, QUEUE_EXPORT)
Check = dict[str, Any]


def _error(exc: BaseException) -> Check:
    return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}


def check_broker() -> Check:
    from service.queue import app as celery_app

    try:
        with celery_app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=NETWORK_TIMEOUT)
        return {"ok": True}
    except Exception as exc:
        return _error(exc)


def check_store(settings: Settings) -> Check:
    try:
        settings.store_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=settings.store_dir, prefix=".health-") as f:
            f.write(b"ok")
            f.flush()
            os.fsync(f.fileno())
        st = os.statvfs(settings.store_dir)
        return {"ok": True, "free_bytes": st.f_bavail * st.f_frsize, "total_bytes": st.f_blocks * st.f_frsize}
    except OSError as exc:
        return {"ok": False, "error": str(exc)}


def check_database(settings: Settings) -> Check:
    """The job database answers, at which schema revision, and can record new jobs
    (`dicom_synth.jobstore.write_problem`: no recent write error, room left for SQLite)."""
    from dicom_synth.jobstore import write_problem

    try:
        engine = engine_for(settings.jobs_db_url)
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        unwritable = write_problem(settings.jobs_db_url)
        if unwritable is not None:
            return {"ok": False, "backend": engine.dialect.name, "error": unwritable}
        return {"ok": True, "backend": engine.dialect.name, "revision": current_revision(engine)}
    except Exception as exc:
        return _error(exc)


def check_models(settings: Settings) -> Check:
    models = {}
    ok = True
    for task in known_tasks(settings.models_dir):
        try:
            card = load_card(task, settings.models_dir)
            models[task] = {"ok": True, "name": card.name, "version": card.version}
        except Exception as exc:
            ok = False
            models[task] = {"ok": False, "error": str(exc)}
    return {"ok": ok and bool(models), "models": models}


def check_processes(settings: Settings) -> Check | None:
    """The runner's children (None when no runner runs them, e.g. one container each)."""
    status = read_status(settings.data_dir.resolve(), settings.node_name)
    if status is None:
        return None
    children = status["children"]
    down = sorted(name for name, child in children.items() if not child["up"])
    return {"ok": not down, "down": down, "children": children}


def check_workers(timeout: float = NETWORK_TIMEOUT) -> Check:
    """Which Celery workers answer, per queue they consume; ok when every queue has one."""
    from service.queue import app as celery_app

    try:
        answers = celery_app.control.inspect(timeout=timeout).active_queues() or {}
    except Exception as exc:
        return _error(exc)
    queues: dict[str, list[str]] = {q: [] for q in QUEUES}
    for worker, consumed in sorted(answers.items()):
        for queue in consumed or ():
            queues.setdefault(queue["name"], []).append(worker)
    empty = [q for q in QUEUES if not queues[q]]
    out: Check = {"ok": not empty, "queues": queues}
    if empty:
        out["error"] = f"no worker answers for queue {', '.join(empty)}"
    return out


def _echo(settings: Settings, pacs: PacsAddress) -> Check:
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    from service.tls import pacs_client_context

    ae = AE(ae_title=settings.ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = NETWORK_TIMEOUT
    ae.add_requested_context(Verification)
    assoc = ae.associate(pacs.host, pacs.port, ae_title=pacs.ae_title, tls_args=pacs_client_context(settings))
    if not assoc.is_established:
        return {"ok": False, "how": "C-ECHO", "error": f"association with {pacs} not established"}
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    code = int(status.Status) if status and "Status" in status else None
    out: Check = {"ok": code == 0, "how": "C-ECHO", "status": None if code is None else f"0x{code:04X}"}
    if code != 0:
        out["error"] = "no C-ECHO answer" if code is None else f"C-ECHO status 0x{code:04X}"
    return out


def _dicomweb_ping(url: str) -> Check:
    request = urllib.request.Request(f"{url}/studies?limit=1", headers={"Accept": "application/dicom+json"})
    try:
        with urllib.request.urlopen(request, timeout=NETWORK_TIMEOUT) as answer:  # noqa: S310 (the admin's URL)
            status = answer.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (urllib.error.URLError, OSError) as exc:
        return {"ok": False, "how": "QIDO-RS", "error": f"{type(exc).__name__}: {exc}"}
    out: Check = {"ok": status < 400, "how": "QIDO-RS", "status": status}
    if status >= 400:
        out["error"] = f"QIDO-RS answered HTTP {status}"
    return out


def check_pacs(settings: Settings) -> Check:
    """Whether the PACS results go to answers: C-ECHO, or QIDO-RS for a DICOMweb one."""
    if settings.pacs is None:
        return {"ok": True, "configured": False, "detail": "SYNTH_PACS is unset: results are kept locally"}
    pacs = settings.pacs
    try:
        out = _echo(settings, pacs) if isinstance(pacs, PacsAddress) else _dicomweb_ping(pacs.url)
    except Exception as exc:
        out = _error(exc)
    return {"configured": True, "address": str(settings.pacs), **out}


_cache: dict[str, Check] = {}
_cache_lock = threading.Lock()


def cached(name: str, check: Callable[[], Check | None], *, seconds: float = CACHE_SECONDS) -> Check | None:
    """`check()` with the time it ran (`checked_at`), run again only when that result is
    older than `seconds`."""
    with _cache_lock:
        seen = _cache.get(name)
    if seen is not None and time.time() - seen["checked_at"] < seconds:
        return seen
    result = check()
    if result is None:
        return None
    result = {**result, "checked_at": time.time()}
    with _cache_lock:
        _cache[name] = result
    return result


def dashboard_checks(settings: Settings) -> dict[str, Check]:
    """Every check, each cached (keyed by data directory, as tests run several services)."""
    key = str(settings.data_dir.resolve())
    checks: dict[str, Callable[[], Check | None]] = {
        "broker": check_broker,
        "database": lambda: check_database(settings),
        "store": lambda: check_store(settings),
        "workers": check_workers,
        "pacs": lambda: check_pacs(settings),
        "models": lambda: check_models(settings),
        "processes": lambda: check_processes(settings),
    }
    results = {name: cached(f"{key}:{name}", check) for name, check in checks.items()}
    return {name: result for name, result in results.items() if result is not None}
