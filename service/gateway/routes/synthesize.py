"""POST /synthesize: a series uploaded (multipart form) or named by reference (JSON body),
made into a job (`service.submit`, `service.fetch`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, HTTPException, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dicom_synth.pipeline import UnknownTaskError, check_task_name
from dicom_synth.taskfit import SourceContrastError, check_source_contrast
from service.fetch import SeriesRef, fetch_and_submit
from service.gateway.auth import requires
from service.gateway.deps import SettingsDep
from service.store import is_valid_uid
from service.submit import submit_upload
from service.uploads import UploadError

router = APIRouter()


class SeriesReference(BaseModel):
    """A series already in SYNTH_PACS, to fetch and synthesize from."""

    model_config = ConfigDict(extra="forbid")
    study_instance_uid: str = Field(description="StudyInstanceUID of the series")
    series_instance_uid: str = Field(description="SeriesInstanceUID of the series")
    task: str = Field("auto", description="auto, or a task name")
    source_contrast: str | None = Field(None, description="for a brain series: t1, t2, t1c, flair")


_BY_REFERENCE = {"requestBody": {"content": {"application/json": {"schema": SeriesReference.model_json_schema()}}}}


@router.post("/synthesize", status_code=202, dependencies=[requires("submit")], openapi_extra=_BY_REFERENCE)
async def synthesize(
    request: Request,
    settings: SettingsDep,
    files: Annotated[list[UploadFile], File(description="DICOM files of one series, or one zip")] = [],  # noqa: B006
    task: Annotated[str, Form(description="auto, or a task name")] = "auto",
    source_contrast: Annotated[
        str | None, Form(description="what a brain series is when the classifier cannot tell: t1, t2, t1c, flair")
    ] = None,
) -> dict:
    """Queue one series for synthesis; answers with the job to poll. The series is uploaded
    (multipart form), or named by a JSON body {"study_instance_uid", "series_instance_uid",
    "task", "source_contrast"} and fetched from SYNTH_PACS within the request (404: the
    PACS has no such series, 502: it cannot be reached or fails, 504: too slow). A requested
    task (or a source_contrast) is checked against the series first: a misfit answers 422
    with the reason and stores nothing."""
    if request.headers.get("content-type", "").split(";")[0].strip().lower() == "application/json":
        ref = await _reference(request)
        job = await run_in_threadpool(_refusals_as_http, fetch_and_submit, settings, ref)
    else:
        task, source_contrast = _checked_task(task, source_contrast)
        uploads = [(f.filename or "", f.file) for f in files]
        job = await run_in_threadpool(_refusals_as_http, submit_upload, settings, uploads, task, source_contrast)
    return {"job_id": job.job_id, "status_url": f"/jobs/{job.job_id}"}


def _checked_task(task: str, source_contrast: str | None) -> tuple[str, str | None]:
    try:
        check_task_name(task)
        return task, check_source_contrast(source_contrast, task)
    except (UnknownTaskError, SourceContrastError) as exc:
        raise HTTPException(422, str(exc)) from exc


async def _reference(request: Request) -> SeriesRef:
    try:
        body = SeriesReference.model_validate(await request.json())
    except ValueError as exc:  # not JSON, or not the shape (pydantic's ValidationError is one)
        detail = exc.errors(include_url=False) if isinstance(exc, ValidationError) else f"not JSON: {exc}"
        raise HTTPException(422, detail) from exc
    for name in ("study_instance_uid", "series_instance_uid"):
        if not is_valid_uid(getattr(body, name).strip()):
            raise HTTPException(422, f"{name} is not a DICOM UID: {getattr(body, name)!r}")
    task, source_contrast = _checked_task(body.task, body.source_contrast)
    return SeriesRef(body.study_instance_uid.strip(), body.series_instance_uid.strip(), task, source_contrast)


def _refusals_as_http(submit, *args):
    try:
        return submit(*args)
    except UploadError as exc:
        raise HTTPException(exc.status_code, exc.reason) from exc
