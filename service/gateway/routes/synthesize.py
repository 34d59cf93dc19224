from __future__ import annotations

import shutil
from typing import Annotated

from fastapi import APIRouter, File, Form, HTTPException, UploadFile
from fastapi.concurrency import run_in_threadpool

from dicom_synth.diskspace import low_disk_reason
from dicom_synth.limits import Limits, OverLimit
from dicom_synth.pipeline import UnknownTaskError, check_task_name, decide
from dicom_synth.series import SeriesReadError, load_series
from dicom_synth.taskfit import SourceContrastError, check_source_contrast
from service.completion import mark_announced
from service.gateway.auth import requires
from service.gateway.deps import SettingsDep
from service.intake import accept_series
from service.store import InvalidInstance, SeriesStore
from service.uploads import UploadError, new_staging_dir, stage_upload

router = APIRouter()


@router.post("/synthesize", status_code=202, dependencies=[requires("submit")])
async def synthesize(
    settings: SettingsDep,
    files: Annotated[list[UploadFile], File(description="DICOM files of one series, or one zip")] = [],  # noqa: B006
    task: Annotated[str, Form(description="auto, or a task name")] = "auto",
    source_contrast: Annotated[
        str | None, Form(description="what a brain series is when the classifier cannot tell: t1, t2, t1c, flair")
    ] = None,
) -> dict:
    """Queue one series for synthesis; answers with the job to poll. A requested task (or
    a source_contrast) is checked against the series first: a misfit answers 422 with the
    reason and stores nothing."""
    try:
        check_task_name(task)
        source_contrast = check_source_contrast(source_contrast, task)
    except (UnknownTaskError, SourceContrastError) as exc:
        raise HTTPException(422, str(exc)) from exc
    return await run_in_threadpool(_ingest, settings, files, task, source_contrast)


def _check_fit(staged_files: list, task: str, source_contrast: str | None) -> None:
    """The worker's own decision on the staged files; a refusal is the client's 422."""
    try:
        loaded = load_series(staged_files, pixels=True)
    except SeriesReadError as exc:
        raise HTTPException(422, f"cannot read the series: {exc}") from exc
    decision = decide(loaded, task, source_contrast)
    if decision.task is None:
        raise HTTPException(422, decision.reason)


def _ingest(settings, files: list[UploadFile], task: str, source_contrast: str | None = None) -> dict:
    low = low_disk_reason(settings.data_dir, settings.min_free_gb)
    if low is not None:  # refused before a byte is staged, while running jobs still have room
        raise HTTPException(507, f"not accepting uploads: {low}")
    staging = new_staging_dir(settings.data_dir)
    try:
        staged = stage_upload(((f.filename or "", f.file) for f in files), staging,
                              Limits.from_settings(settings))
        if task != "auto" or source_contrast is not None:
            _check_fit(staged.files, task, source_contrast)
        store = SeriesStore(settings.store_dir, max_instance_pixels=settings.max_instance_pixels,
                            max_series_instances=settings.max_series_instances)
        stored = _store_all(store, staged.files)
    except UploadError as exc:
        raise HTTPException(exc.status_code, exc.reason) from exc
    except OverLimit as exc:
        raise HTTPException(413, str(exc)) from exc
    except InvalidInstance as exc:
        raise HTTPException(422, f"damaged DICOM: {exc}") from exc
    except OSError as exc:
        raise HTTPException(507, f"cannot store the upload: {exc.strerror or exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    files = sorted(set(stored))
    job = accept_series(
        settings,
        study_instance_uid=staged.study_instance_uid,
        series_instance_uid=staged.series_instance_uid,
        files=files,
        origin="http",
        requested_task=task,
        source_contrast=source_contrast,
    )
    # The job has the series: a listener restart must not announce it again.
    mark_announced(store, staged.study_instance_uid, staged.series_instance_uid, files, "http upload",
                   job_id=job.job_id)
    return {"job_id": job.job_id, "status_url": f"/jobs/{job.job_id}"}


def _store_all(store: SeriesStore, paths: list) -> list:
    """Store every file or none: on a failure, the instances this upload added are removed
    again, so no partial series is left for the listener's recovery to turn into a job."""
    added = []
    stored = []
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
    return stored
