"""Turn a series the gateway was handed (an HTTP upload) or fetched (from the PACS, by
reference: `service.fetch`) into a job, with the same checks and the same store.

Every refusal is an `UploadError` (HTTP status and reason) and leaves nothing: not in the
series store, not in the job store. Once the job exists its series is marked announced,
so the listener's series completion (and its recovery after a restart) never makes a
second job of the same instances.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import BinaryIO

from dicom_synth.diskspace import low_disk_reason
from dicom_synth.domain import Job
from dicom_synth.jobstore import JobStoreUnavailable, write_problem
from dicom_synth.limits import Limits, OverLimit
from dicom_synth.pipeline import decide
from dicom_synth.series import SeriesReadError, load_series
from dicom_synth.settings import Settings
from service.completion import mark_announced
from service.intake import accept_series
from service.store import InvalidInstance, SeriesStore
from service.uploads import StagedSeries, UploadError, new_staging_dir, stage_upload


def open_store(settings: Settings) -> SeriesStore:
    return SeriesStore(settings.store_dir, max_instance_pixels=settings.max_instance_pixels,
                       max_series_instances=settings.max_series_instances)


def refuse_when_full(settings: Settings, what: str = "uploads") -> None:
    """507 before a byte is staged: the data disk is past its watermark (running jobs
    still have room), or the job store cannot write (the job could not be recorded)."""
    problem = low_disk_reason(settings.data_dir, settings.min_free_gb) or write_problem(settings.jobs_db_url)
    if problem is not None:
        raise UploadError(507, f"not accepting {what}: {problem}")


def check_fit(files: Sequence[Path], task: str, source_contrast: str | None) -> None:
    """The worker's own decision on the files, for a requested task or source contrast;
    a refusal is the client's 422."""
    if task == "auto" and source_contrast is None:
        return
    try:
        loaded = load_series(list(files), pixels=True)
    except SeriesReadError as exc:
        raise UploadError(422, f"cannot read the series: {exc}") from exc
    decision = decide(loaded, task, source_contrast)
    if decision.task is None:
        raise UploadError(422, decision.reason)


def submit_upload(settings: Settings, uploads: Iterable[tuple[str, BinaryIO]], task: str,
                  source_contrast: str | None) -> Job:
    """An HTTP upload (files or one zip, `service.uploads`) made into a job."""
    refuse_when_full(settings)
    staging = new_staging_dir(settings.data_dir)
    try:
        try:
            staged = stage_upload(uploads, staging, Limits.from_settings(settings))
        except OSError as exc:
            raise UploadError(507, f"cannot store the upload: {exc.strerror or exc}") from exc
        return submit_staged(settings, staged, task, source_contrast, origin="http", reason="http upload")
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def submit_staged(settings: Settings, staged: StagedSeries, task: str, source_contrast: str | None, *,
                  origin: str, reason: str) -> Job:
    """Check the fit, store every file or none, and make the job."""
    check_fit(staged.files, task, source_contrast)
    store = open_store(settings)
    try:
        stored, added = store_all(store, staged.files)
    except OverLimit as exc:
        raise UploadError(413, str(exc)) from exc
    except InvalidInstance as exc:
        raise UploadError(422, f"damaged DICOM: {exc}") from exc
    except OSError as exc:
        raise UploadError(507, f"cannot store the series: {exc.strerror or exc}") from exc
    return make_job(settings, store, staged.study_instance_uid, staged.series_instance_uid, sorted(set(stored)),
                    added, task=task, source_contrast=source_contrast, origin=origin, reason=reason)


def make_job(settings: Settings, store: SeriesStore, study_uid: str, series_uid: str, files: list[Path],
             added: Sequence[Path], *, task: str, source_contrast: str | None, origin: str, reason: str) -> Job:
    """The job for `files` (stored), then the series marked announced into it. When the job
    store cannot write, the instances this request `added` are removed again (507)."""
    try:
        job = accept_series(settings, study_instance_uid=study_uid, series_instance_uid=series_uid, files=files,
                            origin=origin, requested_task=task, source_contrast=source_contrast)
    except JobStoreUnavailable as exc:  # no job: nothing of the series is kept for recovery to find
        for p in added:
            p.unlink(missing_ok=True)
        raise UploadError(507, f"cannot record the job: {exc}") from exc
    # The job has the series: a listener restart must not announce it again.
    mark_announced(store, study_uid, series_uid, files, reason, job_id=job.job_id)
    return job


def store_all(store: SeriesStore, paths: Sequence[Path]) -> tuple[list[Path], list[Path]]:
    """Store every file or none: on a failure, the instances this call added are removed
    again, so no partial series is left for the listener's recovery to turn into a job.
    Returns the stored paths, and those this call added."""
    added: list[Path] = []
    stored: list[Path] = []
    try:
        for path in paths:
            inst = store.put(path)
            stored.append(inst.path)
            if inst.is_new:
                added.append(inst.path)
    except BaseException:
        for p in added:
            p.unlink(missing_ok=True)
        raise
    return stored, added
