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

from dicom_synth.domain import Job, JobStatus
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
) -> Job:
    """Persist a job for the series and enqueue its classification."""
    from service.queue import enqueue_classify

    job_id = uuid.uuid4().hex
    _snapshot(files, job_input_dir(settings, job_id))
    job = JobStore(settings.db_path).create(
        Job(
            job_id=job_id,
            status=JobStatus.RECEIVED,
            source_series_uid=series_instance_uid,
            study_instance_uid=study_instance_uid,
            origin=origin,
            requested_task=requested_task,
            source_contrast=source_contrast,
        )
    )
    enqueue_classify(job_id)
    log.info("job %s: %d instances of series %s from %s", job_id, len(files), series_instance_uid, origin)
    return job


def requeue_unfinished(settings: Settings) -> int:
    """After a restart, put every job that is not final back on its queue.

    Tasks are idempotent and check the job's state, so a job that is still on a queue
    and gets enqueued again runs once to completion and the duplicate is a no-op.
    """
    from dicom_synth.queueconf import task_for_status
    from service.queue import app

    store = JobStore(settings.db_path)
    count = 0
    for job in store.unfinished():
        task = task_for_status(job.status)
        if task is None:
            continue
        if job.status == JobStatus.RUNNING:
            store.update(job.job_id, status=JobStatus.QUEUED)
        app.send_task(task, args=[job.job_id])
        count += 1
    return count
