"""The service's Celery app: it enqueues jobs by task name and runs the export task
(`celery -A service.queue worker -Q export`). It never imports the worker."""

from __future__ import annotations

import logging

from celery import Celery
from celery import Task as CeleryTask
from celery.signals import worker_init, worker_ready

from dicom_synth.domain import DicomWebAddress, Job, JobStatus
from dicom_synth.filemodes import keep_files_private
from dicom_synth.jobstate import JobTaskHooks, advance, begin_attempt, deliver, resume, superseded_reason
from dicom_synth.jobstore import JobStore
from dicom_synth.queueconf import TASK_EXPORT, celery_config
from dicom_synth.settings import get_settings, job_output_dir

log = logging.getLogger(__name__)


def make_app() -> Celery:
    settings = get_settings()
    app = Celery("dicom_synth_service")
    if settings.broker_url:
        app.conf.update(celery_config(settings.broker_url))
    return app


app = make_app()


@worker_init.connect
def _private_files(**_: object) -> None:
    keep_files_private(get_settings().data_dir)


def post(job: Job | None) -> bool:
    """Send the message in the job's outbox (`dicom_synth.jobstate.deliver`): False when
    the broker did not take it now; the outbox relay sends it later."""
    return deliver(_store(), app.send_task, job)


def _store() -> JobStore:
    return JobStore(get_settings().jobs_db_url)


class JobTask(JobTaskHooks, CeleryTask):
    """Marks the job failed with the reason when the task raises, as the worker's tasks do;
    a job store that cannot write now is retried (JobTaskHooks.retry_options)."""


@worker_ready.connect
def resume_claimed_exports(sender, **kwargs) -> None:  # noqa: ARG001
    """An export worker that comes back resends the exports it had claimed (see
    `dicom_synth.jobstate.resume`)."""
    resume(_store(), app.send_task, claimed_by=sender.hostname)


@app.task(name=TASK_EXPORT, base=JobTask, bind=True, **JobTaskHooks.retry_options)
def export(self, job_id: str, token: str | None = None) -> str:
    """Send a job's output series to the PACS; a PACS that stays down ends the job
    `failed` with the reason, files kept, so POST /jobs/{id}/resend can try again. A job
    superseded by a fuller one is never sent: it ends `skipped` with the reason."""
    from service.export import ExportError, send_files
    from service.tls import pacs_client_context

    settings = get_settings()
    store = _store()
    job = store.get(job_id)
    if job.status != JobStatus.EXPORTING:
        return str(job.status)
    job = begin_attempt(store, job_id, TASK_EXPORT, only_from={JobStatus.EXPORTING}, token=token,
                        message_id=self.request.id, claimed_by=self.request.hostname)
    if job is None:
        return "not started"  # moved on meanwhile, or poison (failed)
    if job.superseded_by:
        advance(store, job_id, JobStatus.SKIPPED, only_from={JobStatus.EXPORTING}, error=superseded_reason(job))
        return "superseded"
    if settings.pacs is None:
        advance(store, job_id, JobStatus.DONE, only_from={JobStatus.EXPORTING}, progress=1.0)
        return "done"
    files = sorted(job_output_dir(settings, job_id).rglob("*.dcm"))
    try:
        if isinstance(settings.pacs, DicomWebAddress):
            from service import stow_export

            stow_export.send_files(files, settings.pacs, retries=settings.export_retries,
                                   backoff_seconds=settings.export_backoff_seconds)
        else:
            send_files(
                files, settings.pacs, calling_ae=settings.ae_title,
                retries=settings.export_retries, backoff_seconds=settings.export_backoff_seconds,
                tls=pacs_client_context(settings),
            )
    except ExportError as exc:
        advance(store, job_id, JobStatus.FAILED, only_from={JobStatus.EXPORTING},
                error=f"export to {settings.pacs} failed: {exc}")
        return "failed"
    advance(store, job_id, JobStatus.DONE, only_from={JobStatus.EXPORTING}, progress=1.0, error=None)
    return "done"
