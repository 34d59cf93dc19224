from __future__ import annotations

import os
import tempfile

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from dicom_synth.registry import known_tasks, load_card
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


@router.get("/healthz")
def healthz(settings: SettingsDep) -> JSONResponse:
    """Broker, store and models, each checked; 503 when any fails."""
    checks = {"broker": _check_broker(), "store": _check_store(settings), "models": _check_models(settings)}
    ok = all(c["ok"] for c in checks.values())
    return JSONResponse({"ok": ok, **checks}, status_code=200 if ok else 503)
