"""Builds the FastAPI app; routes live in service/gateway/routes."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from dicom_synth import __version__
from dicom_synth.filemodes import keep_files_private
from dicom_synth.settings import get_settings
from service.dashboard import STATIC_DIR
from service.gateway.audit_calls import AuditCalls
from service.gateway.auth import BearerAuth
from service.gateway.body_limit import UploadSizeLimit
from service.gateway.cors import Cors
from service.gateway.docs import install_docs
from service.gateway.routes import audit, dashboard, dicomweb, health, jobs, metrics, synthesize, viewer
from service.retention import PurgeLoop
from service.uploads import clean_staging

log = logging.getLogger("service.gateway")


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings = app.dependency_overrides.get(get_settings, get_settings)()
    keep_files_private(settings.data_dir)
    if settings.auth == "off":
        log.warning("SYNTH_AUTH=off: the HTTP API answers anyone who can reach it")
    elif settings.api_token is None and settings.api_tokens_file is None and not settings.oidc_issuer:
        log.warning("no token is configured (SYNTH_API_TOKEN, SYNTH_API_TOKENS_FILE, SYNTH_OIDC_ISSUER): "
                    "every request but /healthz answers 401")
    # Staging left by a gateway that died mid-upload (one gateway per data directory).
    clean_staging(settings.data_dir)
    purge = PurgeLoop(settings)  # SYNTH_RETENTION_DAYS: now, then every SYNTH_RETENTION_CHECK_SECONDS
    purge.start()
    try:
        yield
    finally:
        purge.stop()


def create_app() -> FastAPI:
    app = FastAPI(
        title="dicom-synth",
        version=__version__,
        description="Synthesizes the series a study lacks and returns them as clearly synthetic series.",
        lifespan=_lifespan,
        docs_url=None,  # served by install_docs with local assets, no CDN
        redoc_url=None,
    )
    app.add_middleware(UploadSizeLimit)
    app.add_middleware(BearerAuth)  # a request without a token is answered before its body is read
    app.add_middleware(Cors)  # SYNTH_CORS_ORIGINS: a preflight is answered before BearerAuth asks a token
    app.add_middleware(AuditCalls)  # outermost: calls on patient data are audited, refused ones too
    app.include_router(synthesize.router)
    app.include_router(jobs.router)
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(audit.router)
    app.include_router(dicomweb.router)
    app.include_router(dashboard.router)
    app.include_router(viewer.router)
    app.mount("/static/dashboard", StaticFiles(directory=STATIC_DIR), name="dashboard-assets")
    install_docs(app)
    return app


app = create_app()
