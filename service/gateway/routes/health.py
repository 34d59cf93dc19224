from __future__ import annotations

import os
import tempfile
import time

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from dicom_synth.database import current_revision, engine_for
from dicom_synth.registry import known_tasks, load_card
from service.children import read_status
from service.gateway.deps import SettingsDep
from service.queue import app as celery_app

router = APIRouter()


def _check_broker() -> dict:
    try:
        with celery_app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
        return {"ok": True}
    except Exception as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}


def _check_store(settings) -> dict:
    try:
        settings.store_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=settings.store_dir, prefix=".health-") as f:
            f.write(b"ok")
            f.flush()
            os.fsync(f.fileno())
        st = os.statvfs(settings.store_dir)
        return {"ok": True, "free_bytes": st.f_bavail * st.f_frsize}
    except OSError as exc:
        return {"ok": False, "error": str(exc)}


def _check_database(settings) -> dict:
    """The job database answers, at which schema revision."""
    try:
        engine = engine_for(settings.jobs_db_url)
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return {"ok": True, "backend": engine.dialect.name, "revision": current_revision(engine)}
    except Exception as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}


def _check_models(settings) -> dict:
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


def _check_processes(settings) -> dict | None:
    """The runner's children (None when no runner runs them, e.g. one container each)."""
    status = read_status(settings.data_dir.resolve())
    if status is None:
        return None
    children = status["children"]
    down = sorted(name for name, child in children.items() if not child["up"])
    return {"ok": not down, "down": down, "children": children}


@router.get("/healthz")
def healthz(settings: SettingsDep) -> JSONResponse:
    """Broker, store, models and (under the runner) its child processes, each checked;
    503 when any fails, and the failing check says what is unwell."""
    checked_at = time.time()
    checks = {"broker": _check_broker(), "database": _check_database(settings), "store": _check_store(settings),
              "models": _check_models(settings)}
    processes = _check_processes(settings)
    if processes is not None:
        checks["processes"] = processes
    ok = all(c["ok"] for c in checks.values())
    return JSONResponse({"ok": ok, "checked_at": checked_at, **checks}, status_code=200 if ok else 503)
