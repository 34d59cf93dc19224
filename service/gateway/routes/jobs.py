from __future__ import annotations

import io
import zipfile

from fastapi import APIRouter, HTTPException
from fastapi.responses import StreamingResponse

from dicom_synth.domain import JobStatus
from dicom_synth.jobstate import advance
from dicom_synth.jobstore import JobNotFound
from dicom_synth.settings import job_output_dir
from service.gateway.auth import requires
from service.gateway.deps import JobStoreDep, SettingsDep
from service.queue import enqueue_export

router = APIRouter(prefix="/jobs", dependencies=[requires("read")])


def _get(store, job_id: str):
    try:
        return store.get(job_id)
    except JobNotFound:
        raise HTTPException(404, f"no job {job_id}") from None


def _gone_if_purged(job) -> None:
    """410 Gone, with the reason, for a job whose files retention deleted."""
    if job.purged:
        raise HTTPException(410, f"job {job.job_id}: {job.purged.get('reason', 'files purged')}")


@router.get("")
def list_jobs(store: JobStoreDep, limit: int = 50) -> list[dict]:
    """Recent jobs, newest first."""
    return [j.public() for j in store.recent(limit=max(1, min(limit, 1000)))]


@router.get("/{job_id}")
def get_job(job_id: str, store: JobStoreDep) -> dict:
    return _get(store, job_id).public()


@router.get("/{job_id}/result", response_class=StreamingResponse)
def get_result(job_id: str, store: JobStoreDep, settings: SettingsDep) -> StreamingResponse:
    """The output DICOM files as a zip (one folder per output series)."""
    job = _get(store, job_id)
    _gone_if_purged(job)
    out = job_output_dir(settings, job_id)
    files = sorted(out.rglob("*.dcm")) if out.exists() else []
    if not files:
        raise HTTPException(409, f"job {job_id} has no result (status {job.status})")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in files:
            zf.write(f, f.relative_to(out).as_posix())
    buf.seek(0)
    headers = {"Content-Disposition": f'attachment; filename="{job_id}.zip"'}
    return StreamingResponse(buf, media_type="application/zip", headers=headers)


@router.post("/{job_id}/resend", status_code=202, dependencies=[requires("admin")])
def resend(job_id: str, store: JobStoreDep, settings: SettingsDep) -> dict:
    """Send a job's kept output files to the PACS again (after a failed export)."""
    job = _get(store, job_id)
    if settings.pacs is None:
        raise HTTPException(409, "SYNTH_PACS is not set: results are kept locally")
    _gone_if_purged(job)
    if not job.output_series_uids:
        raise HTTPException(409, f"job {job_id} has no output to send (status {job.status})")
    if job.status not in (JobStatus.FAILED, JobStatus.DONE):
        raise HTTPException(409, f"job {job_id} is {job.status}; resend a done or failed job")
    if advance(store, job_id, JobStatus.EXPORTING, only_from={JobStatus.FAILED, JobStatus.DONE}, error=None) is None:
        raise HTTPException(409, f"job {job_id} is {store.get(job_id).status}; resend a done or failed job")
    enqueue_export(job_id)
    return {"job_id": job_id, "status_url": f"/jobs/{job_id}"}
