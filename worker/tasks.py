"""Celery tasks of the worker. Arguments are job IDs (and the outbox token of the
message), never arrays; every task is idempotent (a late-acked task can run twice): it
checks the job's state and the message's token first and writes outputs whose UIDs
derive from the job ID. Each next step's message is written with the state change that
needs it (`advance(..., send=...)`) and sent after (`deliver`): a broker that is down
then does not fail the job, the outbox relay sends it later."""

from __future__ import annotations

import logging
import time
from functools import cache

from celery import Task as CeleryTask
from celery.signals import worker_ready

from dicom_synth.domain import JobStatus
from dicom_synth.domainguard import guard
from dicom_synth.jobstate import JobTaskHooks, advance, begin_attempt, deliver, resume
from dicom_synth.jobstore import JobStore
from dicom_synth.multicontrast import Synthesizer, load_synthesis_model
from dicom_synth.pipeline import decide, synthesize_series, write_outputs
from dicom_synth.queueconf import TASK_CLASSIFY, TASK_EXPORT, TASK_SYNTHESIZE
from dicom_synth.registry import ModelCard, load_card
from dicom_synth.series import load_series
from dicom_synth.settings import get_settings, job_input_dir, job_output_dir
from dicom_synth.taskfit import model_source_label
from worker.app import app

log = logging.getLogger(__name__)


@cache
def _model(task: str) -> tuple[ModelCard, Synthesizer]:
    """Loaded lazily, once per worker process, on the first job that needs it."""
    card = load_card(task, get_settings().models_dir)
    return card, load_synthesis_model(card, threads=get_settings().onnx_threads)


def _store() -> JobStore:
    return JobStore(get_settings().jobs_db_url)


def _input_files(job_id: str) -> list:
    return sorted(job_input_dir(get_settings(), job_id).glob("*.dcm"))


class JobTask(JobTaskHooks, CeleryTask):
    """Marks the job failed with the reason when a task raises, so none is left hanging;
    a job store that cannot write now is retried (JobTaskHooks.retry_options)."""


@worker_ready.connect
def resume_claimed_jobs(sender, **kwargs) -> None:  # noqa: ARG001
    """A worker that died mid-task left its message unacknowledged (Redis redelivers it
    only after the visibility timeout) and its job unfinished. When the worker of the
    same name comes back, it puts the jobs it had claimed back on their queues."""
    resume(_store(), app.send_task, claimed_by=sender.hostname)


@app.task(name=TASK_CLASSIFY, base=JobTask, bind=True, **JobTaskHooks.retry_options)
def classify(self, job_id: str, token: str | None = None) -> str:
    store = _store()
    job = store.get(job_id)
    if job.status not in (JobStatus.RECEIVED, JobStatus.CLASSIFIED):
        return str(job.status)
    if begin_attempt(store, job_id, TASK_CLASSIFY, only_from={JobStatus.RECEIVED, JobStatus.CLASSIFIED},
                     token=token, message_id=self.request.id, claimed_by=self.request.hostname) is None:
        return "not started"  # moved on meanwhile, or poison (failed)
    loaded = load_series(_input_files(job_id), pixels=True)
    decision = decide(loaded, job.requested_task, job.source_contrast)  # loop guard and task fit first
    c = decision.classification
    classified = advance(
        store, job_id, JobStatus.CLASSIFIED, only_from={JobStatus.RECEIVED, JobStatus.CLASSIFIED},
        series_class=c.label if c else None,
        evidence={"confidence": c.confidence, **c.evidence} if c else {"reason": decision.reason},
    )
    if classified is None:
        return "duplicate"
    if decision.task is None:
        advance(store, job_id, JobStatus.SKIPPED, only_from={JobStatus.CLASSIFIED}, error=decision.reason,
                progress=1.0)
        return "skipped"
    queued = advance(store, job_id, JobStatus.QUEUED, only_from={JobStatus.CLASSIFIED}, task=decision.task,
                     send=TASK_SYNTHESIZE)
    if queued is None:
        return "duplicate"
    deliver(store, app.send_task, queued)
    return "queued"


@app.task(name=TASK_SYNTHESIZE, base=JobTask, bind=True, **JobTaskHooks.retry_options)
def synthesize(self, job_id: str, token: str | None = None) -> str:
    settings = get_settings()
    store = _store()
    job = store.get(job_id)
    if job.status not in (JobStatus.QUEUED, JobStatus.RUNNING):
        return str(job.status)
    assert job.task is not None
    running = begin_attempt(store, job_id, TASK_SYNTHESIZE, only_from={JobStatus.QUEUED, JobStatus.RUNNING},
                            to=JobStatus.RUNNING, progress=0.0, token=token, message_id=self.request.id,
                            claimed_by=self.request.hostname)
    if running is None:
        return "not started"  # a duplicate, or poison (failed)
    card, model = _model(job.task)
    loaded = load_series(_input_files(job_id), pixels=True)

    last = [0.0]

    def progress(fraction: float) -> None:
        now = time.monotonic()
        if now - last[0] > 0.5 or fraction >= 1.0:
            last[0] = now
            store.update(job_id, progress=0.05 + 0.85 * fraction)

    source_label = model_source_label(job.source_contrast, job.series_class)
    mode = settings.domain_guard
    outcome = guard(card, model, loaded, mode, source_label=source_label)  # before any synthesis
    if outcome.verdict is not None:
        store.update(job_id, evidence={**(store.get(job_id).evidence or {}), "domain": outcome.evidence(mode)})
    if not outcome.proceed:
        advance(store, job_id, JobStatus.SKIPPED, only_from={JobStatus.RUNNING}, error=outcome.reason,
                progress=1.0)
        return "skipped"
    series = synthesize_series(loaded, model, card, progress=progress, source_label=source_label,
                               notes=outcome.notes)
    uids = write_outputs(series, job_output_dir(settings, job_id))
    if settings.pacs is None:
        advance(store, job_id, JobStatus.DONE, only_from={JobStatus.RUNNING}, progress=1.0,
                output_series_uids=uids)
        return "done"
    exporting = advance(store, job_id, JobStatus.EXPORTING, only_from={JobStatus.RUNNING}, progress=0.9,
                        output_series_uids=uids, send=TASK_EXPORT)
    if exporting is None:
        return "duplicate"
    deliver(store, app.send_task, exporting)
    return "exporting"
