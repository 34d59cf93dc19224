"""What an operator may do to a job, for the HTTP API and the dashboard alike: download its
result, resend its output to the PACS, retry it from its kept input. Each refuses with an
HTTP status and the reason (`Refused`), so both doors answer the same."""

from __future__ import annotations

import io
import zipfile

from dicom_synth.domain import Job, JobStatus
from dicom_synth.jobstate import advance
from dicom_synth.jobstore import JobNotFound, JobStore
from dicom_synth.settings import Settings, job_input_dir, job_output_dir

RETRYABLE = frozenset({JobStatus.FAILED, JobStatus.SKIPPED})
RESENDABLE = frozenset({JobStatus.FAILED, JobStatus.DONE})


class Refused(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


def get_job(store: JobStore, job_id: str) -> Job:
    try:
        return store.get(job_id)
    except JobNotFound:
        raise Refused(404, f"no job {job_id}") from None


def _gone_if_purged(job: Job) -> None:
    """410 Gone, with the reason, for a job whose files retention deleted."""
    if job.purged:
        raise Refused(410, f"job {job.job_id}: {job.purged.get('reason', 'files purged')}")


def result_zip(settings: Settings, job: Job) -> io.BytesIO:
    """The output DICOM files as a zip (one folder per output series)."""
    _gone_if_purged(job)
    out = job_output_dir(settings, job.job_id)
    files = sorted(out.rglob("*.dcm")) if out.exists() else []
    if not files:
        raise Refused(409, f"job {job.job_id} has no result (status {job.status})")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in files:
            zf.write(f, f.relative_to(out).as_posix())
    buf.seek(0)
    return buf


def resend(store: JobStore, settings: Settings, job_id: str) -> Job:
    """Send a job's kept output files to the PACS again (after a failed export)."""
    from dicom_synth.queueconf import TASK_EXPORT
    from service.queue import post

    job = get_job(store, job_id)
    if settings.pacs is None:
        raise Refused(409, "SYNTH_PACS is not set: results are kept locally")
    _gone_if_purged(job)
    if not job.output_series_uids:
        raise Refused(409, f"job {job_id} has no output to send (status {job.status})")
    if job.status not in RESENDABLE:
        raise Refused(409, f"job {job_id} is {job.status}; resend a done or failed job")
    moved = advance(store, job_id, JobStatus.EXPORTING, only_from=RESENDABLE, error=None, send=TASK_EXPORT)
    if moved is None:
        raise Refused(409, f"job {job_id} is {store.get(job_id).status}; resend a done or failed job")
    post(moved)  # the message is in the job's outbox: a broker down now, the relay sends it
    return moved


def retry(store: JobStore, settings: Settings, job_id: str) -> Job:
    """Start a new job from a failed or skipped job's kept input (the same series, task
    and source contrast); the old job stays as it ended. Returns the new job."""
    from service.intake import accept_series

    job = get_job(store, job_id)
    if job.status not in RETRYABLE:
        raise Refused(409, f"job {job_id} is {job.status}; retry a failed or skipped job")
    _gone_if_purged(job)
    files = sorted(p for p in job_input_dir(settings, job_id).glob("*") if p.is_file())
    if not files:
        raise Refused(409, f"job {job_id} kept no input to retry from")
    return accept_series(settings, study_instance_uid=job.study_instance_uid,
                         series_instance_uid=job.source_series_uid, files=files, origin=job.origin,
                         requested_task=job.requested_task, source_contrast=job.source_contrast)
