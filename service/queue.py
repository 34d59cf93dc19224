"""The service's Celery app: it enqueues jobs by task name and runs the export task
(`celery -A service.queue worker -Q export`). It never imports the worker."""

from __future__ import annotations

import logging

from celery import Celery

from dicom_synth.domain import JobStatus
from dicom_synth.jobstore import JobStore
from dicom_synth.queueconf import TASK_CLASSIFY, TASK_EXPORT, celery_config
from dicom_synth.settings import get_settings, job_output_dir

log = logging.getLogger(__name__)


def make_app() -> Celery:
    settings = get_settings()
    app = Celery("dicom_synth_service")
    if settings.broker_url:
        app.conf.update(celery_config(settings.broker_url))
    return app


app = make_app()


def enqueue_classify(job_id: str) -> None:
    app.send_task(TASK_CLASSIFY, args=[job_id])


def enqueue_export(job_id: str) -> None:
    app.send_task(TASK_EXPORT, args=[job_id])


@app.task(name=TASK_EXPORT)
def export(job_id: str) -> str:
    """Send a job's output series to the PACS; a PACS that stays down ends the job
    `failed` with the reason, files kept, so POST /jobs/{id}/resend can try again."""
    from service.export import ExportError, send_files

    settings = get_settings()
    store = JobStore(settings.db_path)
    job = store.get(job_id)
    if job.status != JobStatus.EXPORTING:
        return str(job.status)
    if settings.pacs is None:
        store.update(job_id, status=JobStatus.DONE, progress=1.0)
        return "done"
    files = sorted(job_output_dir(settings, job_id).rglob("*.dcm"))
    try:
        send_files(
            files, settings.pacs, calling_ae=settings.ae_title,
            retries=settings.export_retries, backoff_seconds=settings.export_backoff_seconds,
        )
    except ExportError as exc:
        store.update(job_id, status=JobStatus.FAILED, error=f"export to {settings.pacs} failed: {exc}")
        return "failed"
    store.update(job_id, status=JobStatus.DONE, progress=1.0, error=None)
    return "done"
