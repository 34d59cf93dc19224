"""Turn a complete series (from the listener or an upload) into a persisted job.

The job's input is a snapshot of the series' files (hard links, so no copy), taken
when the series completed: a late instance makes a new job with the full series,
and nothing a job reads can change under it.

The job is written with its classify message in its outbox, then the message is sent: a
broker that is down leaves the job `received` with the message pending, and the outbox
relay sends it when the broker is back (no request fails for it). A job store that cannot
write (full disk) raises JobStoreUnavailable and leaves nothing: the caller refuses the
series (HTTP 507, DICOM 0xA700).
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path

from dicom_synth.domain import Job
from dicom_synth.jobsearch import search_key, search_keys
from dicom_synth.jobstate import new_job, resume
from dicom_synth.jobstore import JobStore, JobStoreUnavailable
from dicom_synth.queueconf import TASK_CLASSIFY
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
    """Persist a job for the series, its classify message in its outbox, and send that.
    `supersedes`: the job made from an earlier, smaller set of the series' instances (it is
    marked superseded). Raises JobStoreUnavailable, leaving no job and no snapshot, when
    the job store cannot write."""
    from service.queue import post

    job_id = uuid.uuid4().hex
    snapshot = job_input_dir(settings, job_id)
    try:
        _snapshot(files, snapshot)
        store = JobStore(settings.jobs_db_url)
        job = store.create(new_job(
            send=TASK_CLASSIFY,
            job_id=job_id,
            source_series_uid=series_instance_uid,
            study_instance_uid=study_instance_uid,
            origin=origin,
            requested_task=requested_task,
            source_contrast=source_contrast,
            supersedes=supersedes,
            **search_keys(files, search_key(settings)),  # what the dashboard searches by, as digests
        ))
    except BaseException:
        shutil.rmtree(snapshot, ignore_errors=True)
        raise
    if supersedes:
        _mark_superseded(store, supersedes, job_id)
    post(job)
    log.info("job %s: %d instances of series %s from %s", job_id, len(files), series_instance_uid, origin)
    return job


def _mark_superseded(store: JobStore, old_job_id: str, new_job_id: str) -> None:
    """Note on the earlier job that a fuller one replaces it (its status is not touched)."""
    from dicom_synth.jobstore import JobNotFound

    try:
        store.update(old_job_id, superseded_by=new_job_id)
    except JobNotFound:
        log.warning("job %s superseded by %s is gone", old_job_id, new_job_id)
    except JobStoreUnavailable as exc:  # the new job exists: not worth refusing the series now
        log.error("job %s: cannot note it superseded by %s (%s)", old_job_id, new_job_id, exc)


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
    """After a restart of this node's runner, put back on their queues the unfinished jobs
    its workers had claimed (and those no worker claimed yet); another node's are left to
    it, or to the stuck-job sweep when it is dead (`dicom_synth.jobstate.resume`).

    Tasks are idempotent and check the job's state, so a job that is still on a queue
    and gets enqueued again runs once to completion and the duplicate is a no-op.
    """
    from service.queue import app

    return len(resume(JobStore(settings.jobs_db_url), app.send_task, node=settings.node_name))


def requeue_stuck_jobs(settings: Settings) -> int:
    """Requeue the jobs stuck past their step's deadline (`dicom_synth.jobstate.requeue_stuck`)."""
    from dicom_synth.jobstate import requeue_stuck
    from service.queue import app

    return len(requeue_stuck(JobStore(settings.jobs_db_url), app.send_task, settings.step_deadlines()))
