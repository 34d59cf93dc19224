"""Turn a complete series (from the listener or an upload) into a persisted job.

The job's input is a snapshot of the series' files (hard links, so no copy), taken
when the series completed: a late instance makes a new job with the full series,
and nothing a job reads can change under it.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Sequence
from pathlib import Path

from dicom_synth.domain import Job
from dicom_synth.jobstate import new_job, resume
from dicom_synth.jobstore import JobStore
from dicom_synth.settings import Settings, job_input_dir

log = logging.getLogger(__name__)


def _snapshot(files: Sequence[Path], dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for src in files:
        target = dest / src.name
        if target.exists():
            continue
        try:
            os.link(src, target)
        except OSError:  # another file system: copy instead
            target.write_bytes(Path(src).read_bytes())


def accept_series(
    settings: Settings,
    *,
    study_instance_uid: str,
    series_instance_uid: str,
    files: Sequence[Path],
    origin: str,
    requested_task: str = "auto",
    source_contrast: str | None = None,
    supersedes: str | None = None,
) -> Job:
    """Persist a job for the series and enqueue its classification. `supersedes`: the job
    made from an earlier, smaller set of the series' instances (it is marked superseded)."""
    from service.queue import enqueue_classify

    job_id = uuid.uuid4().hex
    _snapshot(files, job_input_dir(settings, job_id))
    job = JobStore(settings.jobs_db_url).create(
        new_job(
            job_id=job_id,
            source_series_uid=series_instance_uid,
            study_instance_uid=study_instance_uid,
            origin=origin,
            requested_task=requested_task,
            source_contrast=source_contrast,
            supersedes=supersedes,
        )
    )
    if supersedes:
        _mark_superseded(JobStore(settings.jobs_db_url), supersedes, job_id)
    enqueue_classify(job_id)
    log.info("job %s: %d instances of series %s from %s", job_id, len(files), series_instance_uid, origin)
    return job


def _mark_superseded(store: JobStore, old_job_id: str, new_job_id: str) -> None:
    """Note on the earlier job that a fuller one replaces it (its status is not touched)."""
    from dicom_synth.jobstore import JobNotFound

    try:
        store.update(old_job_id, superseded_by=new_job_id)
    except JobNotFound:
        log.warning("job %s superseded by %s is gone", old_job_id, new_job_id)


def resend_makes_new_job(settings: Settings, job_id: str) -> bool:
    """Whether a DICOM re-send of the series whose last job is `job_id` (with no new
    instance) starts a new job (`dicom_synth.jobstate.resend_starts_new_job`)."""
    from dicom_synth.jobstate import resend_starts_new_job
    from dicom_synth.jobstore import JobNotFound

    try:
        return resend_starts_new_job(JobStore(settings.jobs_db_url).get(job_id))
    except JobNotFound:
        return False


def requeue_unfinished(settings: Settings) -> int:
    """After a restart, put every job that is not final back on its queue.

    Tasks are idempotent and check the job's state, so a job that is still on a queue
    and gets enqueued again runs once to completion and the duplicate is a no-op
    (`dicom_synth.jobstate.resume`).
    """
    from service.queue import app

    return len(resume(JobStore(settings.jobs_db_url), app.send_task))


def requeue_stuck_jobs(settings: Settings) -> int:
    """Requeue the jobs stuck past their step's deadline (`dicom_synth.jobstate.requeue_stuck`)."""
    from dicom_synth.jobstate import requeue_stuck
    from service.queue import app

    return len(requeue_stuck(JobStore(settings.jobs_db_url), app.send_task, settings.step_deadlines()))
