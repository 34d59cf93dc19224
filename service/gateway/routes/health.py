from __future__ import annotations

import time

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from service.gateway.deps import SettingsDep
from service.healthchecks import check_broker, check_database, check_models, check_processes, check_store

router = APIRouter()


@router.get("/healthz")
def healthz(settings: SettingsDep) -> JSONResponse:
    """Broker, store, models and (under the runner) its child processes, each checked;
    503 when any fails, and the failing check says what is unwell."""
    checked_at = time.time()
    checks = {"broker": check_broker(), "database": check_database(settings), "store": check_store(settings),
              "models": check_models(settings)}
    processes = check_processes(settings)
    if processes is not None:
        checks["processes"] = processes
    ok = all(c["ok"] for c in checks.values())
    return JSONResponse({"ok": ok, "checked_at": checked_at, **checks}, status_code=200 if ok else 503)
