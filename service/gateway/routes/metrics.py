"""GET /metrics for Prometheus (service.gateway.metrics). It needs a `read` token, as the
job counts are about patient traffic; SYNTH_METRICS_PUBLIC=true serves it without one,
for a Prometheus on a trusted network that cannot send a bearer token."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from service.gateway.auth import requires
from service.gateway.deps import SettingsDep
from service.gateway.metrics import exposition

router = APIRouter()


@router.get("/metrics", dependencies=[requires("read")], response_class=Response)
async def get_metrics(settings: SettingsDep) -> Response:
    """Prometheus text format: counters and histograms of every process, gauges computed now."""
    return Response(await run_in_threadpool(exposition, settings), media_type=CONTENT_TYPE_LATEST)
