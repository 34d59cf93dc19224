"""Builds the FastAPI app; routes live in service/gateway/routes."""

from __future__ import annotations

from fastapi import FastAPI

from dicom_synth import __version__
from service.gateway.routes import health, jobs, synthesize


def create_app() -> FastAPI:
    app = FastAPI(
        title="dicom-synth",
        version=__version__,
        description="Synthesizes the series a study lacks and returns them as clearly synthetic series.",
    )
    app.include_router(synthesize.router)
    app.include_router(jobs.router)
    app.include_router(health.router)
    return app


app = create_app()
