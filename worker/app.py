"""The worker's Celery app: `celery -A worker.app worker -Q default,gpu`."""

from __future__ import annotations

from celery import Celery
from celery.signals import worker_init

from dicom_synth.filemodes import keep_files_private
from dicom_synth.queueconf import celery_config
from dicom_synth.settings import get_settings


def make_app() -> Celery:
    settings = get_settings()
    if not settings.broker_url:
        raise RuntimeError(
            "SYNTH_BROKER_URL is not set: start the worker through `make run` "
            "(which runs an embedded broker) or point it at Redis, e.g. redis://localhost:6379/0"
        )
    app = Celery("dicom_synth_worker")
    app.conf.update(celery_config(settings.broker_url))
    app.conf.include = ["worker.tasks"]
    return app


app = make_app()


@worker_init.connect
def _private_files(**_: object) -> None:
    keep_files_private(get_settings().data_dir)
