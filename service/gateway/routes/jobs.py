from __future__ import annotations

from fastapi import APIRouter, HTTPException
from fastapi.responses import StreamingResponse

from service import jobactions
from service.gateway.auth import requires
from service.gateway.deps import JobStoreDep, SettingsDep

router = APIRouter(prefix="/jobs", dependencies=[requires("read")])


def _answer(action, *args):
    """Run a `service.jobactions` function; its refusal becomes the HTTP error."""
    try:
        return action(*args)
    except jobactions.Refused as refused:
        raise HTTPException(refused.status, refused.detail) from None


@router.get("")
def list_jobs(store: JobStoreDep, limit: int = 50) -> list[dict]:
    """Recent jobs, newest first."""
    return [j.public() for j in store.recent(limit=max(1, min(limit, 1000)))]


@router.get("/{job_id}")
def get_job(job_id: str, store: JobStoreDep) -> dict:
    return _answer(jobactions.get_job, store, job_id).public()


@router.get("/{job_id}/result", response_class=StreamingResponse)
def get_result(job_id: str, store: JobStoreDep, settings: SettingsDep) -> StreamingResponse:
    """The output DICOM files as a zip (one folder per output series)."""
    job = _answer(jobactions.get_job, store, job_id)
    buf = _answer(jobactions.result_zip, settings, job)
    headers = {"Content-Disposition": f'attachment; filename="{job_id}.zip"'}
    return StreamingResponse(buf, media_type="application/zip", headers=headers)


@router.post("/{job_id}/resend", status_code=202, dependencies=[requires("admin")])
def resend(job_id: str, store: JobStoreDep, settings: SettingsDep) -> dict:
    """Send a job's kept output files to the PACS again (after a failed export)."""
    _answer(jobactions.resend, store, settings, job_id)
    return {"job_id": job_id, "status_url": f"/jobs/{job_id}"}
