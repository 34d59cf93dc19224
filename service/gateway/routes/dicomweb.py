"""DICOMweb under /dicomweb (PS3.18): STOW-RS into the service, QIDO-RS and WADO-RS over
every series it holds, sources and synthetic results (`service.dicomweb`)."""

from __future__ import annotations

import shutil
from collections.abc import Callable

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.concurrency import run_in_threadpool
from starlette.responses import JSONResponse, StreamingResponse

from dicom_synth.diskspace import low_disk_reason
from dicom_synth.jobstore import write_problem
from service.dicomweb import index, qido, stow, wado
from service.dicomweb.multipart import MultipartError, read_parts, related_body, related_boundary
from service.gateway.auth import requires
from service.gateway.deps import SettingsDep
from service.uploads import new_staging_dir

router = APIRouter(prefix="/dicomweb", tags=["dicomweb"])
DICOM_JSON = "application/dicom+json"


def _base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/") + "/dicomweb"


def _json(body: object, status_code: int = 200, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(body, status_code=status_code, media_type=DICOM_JSON, headers=headers)


# --- STOW-RS ------------------------------------------------------------------------------


async def _stow(request: Request, settings, study: str | None) -> Response:
    try:
        boundary = related_boundary(request.headers.get("content-type", ""))
    except MultipartError as exc:
        raise HTTPException(exc.status_code, exc.reason) from exc
    low = low_disk_reason(settings.data_dir, settings.min_free_gb) or write_problem(settings.jobs_db_url)
    if low is not None:  # as POST /synthesize: refused before a byte is staged
        raise HTTPException(507, f"not accepting instances: {low}")
    staging = new_staging_dir(settings.data_dir)
    try:
        try:
            parts = await read_parts(request.stream(), boundary, staging, max_bytes=settings.max_upload_bytes,
                                     max_parts=settings.max_series_instances)
        except MultipartError as exc:
            raise HTTPException(exc.status_code, exc.reason) from exc
        try:
            outcome = await run_in_threadpool(stow.store_parts, settings, parts, study)
        except stow.CompletionUnavailable as exc:
            raise HTTPException(503, str(exc), headers={"Retry-After": "5"}) from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    warnings = [f'299 dicom-synth: "{f.sop_instance_uid or "part"}: {f.detail}"'.replace("\n", " ")
                for f in outcome.failed[:10]]
    headers = {"Warning": ", ".join(warnings)} if warnings else None
    return _json(stow.response_body(outcome, _base_url(request)), outcome.status_code, headers)


@router.post("/studies", dependencies=[requires("submit")])
async def store_instances(request: Request, settings: SettingsDep) -> Response:
    """STOW-RS: store the instances of a multipart/related; type="application/dicom" body."""
    return await _stow(request, settings, None)


@router.post("/studies/{study}", dependencies=[requires("submit")])
async def store_study_instances(study: str, request: Request, settings: SettingsDep) -> Response:
    """STOW-RS into one study: an instance of another study fails (0xA900)."""
    return await _stow(request, settings, study)


# --- QIDO-RS ------------------------------------------------------------------------------


async def _search(request: Request, settings, level: str, study: str | None = None,
                  series: str | None = None) -> Response:
    try:
        query = qido.parse_query(level, request.query_params.multi_items())
    except qido.QueryError as exc:
        raise HTTPException(400, str(exc)) from exc

    def run() -> list[dict]:
        return qido.search(query, index.instances(settings, study, series))

    return _json(await run_in_threadpool(run))


@router.get("/studies", dependencies=[requires("read")])
async def search_studies(request: Request, settings: SettingsDep) -> Response:
    return await _search(request, settings, "study")


@router.get("/series", dependencies=[requires("read")])
async def search_all_series(request: Request, settings: SettingsDep) -> Response:
    return await _search(request, settings, "series")


@router.get("/instances", dependencies=[requires("read")])
async def search_all_instances(request: Request, settings: SettingsDep) -> Response:
    return await _search(request, settings, "instance")


@router.get("/studies/{study}/series", dependencies=[requires("read")])
async def search_series(study: str, request: Request, settings: SettingsDep) -> Response:
    return await _search(request, settings, "series", study)


@router.get("/studies/{study}/instances", dependencies=[requires("read")])
async def search_study_instances(study: str, request: Request, settings: SettingsDep) -> Response:
    return await _search(request, settings, "instance", study)


@router.get("/studies/{study}/series/{series}/instances", dependencies=[requires("read")])
async def search_instances(study: str, series: str, request: Request, settings: SettingsDep) -> Response:
    return await _search(request, settings, "instance", study, series)


# --- WADO-RS ------------------------------------------------------------------------------


async def _held(settings, study: str, series: str | None = None, sop: str | None = None
                ) -> list[index.IndexedInstance]:
    found = await run_in_threadpool(index.instances, settings, study, series, sop)
    if not found:
        what = f"instance {sop}" if sop else f"series {series}" if series else f"study {study}"
        raise HTTPException(404, f"no {what} here")
    return found


def _instances_response(found: list[index.IndexedInstance]) -> Response:
    content_type, body = related_body([i.path for i in found], "application/dicom")
    return StreamingResponse(body, media_type=content_type)


async def _metadata(request: Request, settings, study: str, series: str | None = None,
                    sop: str | None = None) -> Response:
    found = await _held(settings, study, series, sop)
    base = _base_url(request)
    return _json(await run_in_threadpool(lambda: [wado.metadata(i, base) for i in found]))


@router.get("/studies/{study}", dependencies=[requires("read")])
async def retrieve_study(study: str, settings: SettingsDep) -> Response:
    return _instances_response(await _held(settings, study))


@router.get("/studies/{study}/series/{series}", dependencies=[requires("read")])
async def retrieve_series(study: str, series: str, settings: SettingsDep) -> Response:
    return _instances_response(await _held(settings, study, series))


@router.get("/studies/{study}/series/{series}/instances/{sop}", dependencies=[requires("read")])
async def retrieve_instance(study: str, series: str, sop: str, settings: SettingsDep) -> Response:
    return _instances_response(await _held(settings, study, series, sop))


@router.get("/studies/{study}/metadata", dependencies=[requires("read")])
async def study_metadata(study: str, request: Request, settings: SettingsDep) -> Response:
    return await _metadata(request, settings, study)


@router.get("/studies/{study}/series/{series}/metadata", dependencies=[requires("read")])
async def series_metadata(study: str, series: str, request: Request, settings: SettingsDep) -> Response:
    return await _metadata(request, settings, study, series)


@router.get("/studies/{study}/series/{series}/instances/{sop}/metadata", dependencies=[requires("read")])
async def instance_metadata(study: str, series: str, sop: str, request: Request, settings: SettingsDep) -> Response:
    return await _metadata(request, settings, study, series, sop)


async def _on_frames(call: Callable[[], object]) -> object:
    try:
        return await run_in_threadpool(call)
    except wado.FrameError as exc:
        raise HTTPException(exc.status_code, str(exc)) from exc


@router.get("/studies/{study}/series/{series}/instances/{sop}/frames/{frame_list}",
            dependencies=[requires("read")])
async def retrieve_frames(study: str, series: str, sop: str, frame_list: str, settings: SettingsDep) -> Response:
    """Frames, uncompressed (multipart/related; type="application/octet-stream")."""
    (inst,) = await _held(settings, study, series, sop)
    numbers = await _on_frames(lambda: wado.frame_numbers(frame_list, wado.frame_count(inst)))
    data = await _on_frames(lambda: wado.frames(inst, numbers))
    content_type, body = related_body(data, "application/octet-stream")
    return StreamingResponse(body, media_type=content_type)


def _rendered_media(request: Request) -> str:
    accept = request.query_params.get("accept") or request.headers.get("accept", "")
    kinds = [a.split(";")[0].strip().lower() for a in accept.split(",") if a.strip()]
    for kind in kinds or ["image/png"]:
        if kind in ("image/png", "image/*", "*/*"):
            return "image/png"
        if kind == "image/jpeg" and wado.jpeg_available():
            return "image/jpeg"
    raise HTTPException(406, "rendered images are image/png" + (" or image/jpeg" if wado.jpeg_available() else ""))


async def _rendered(request: Request, settings, study: str, series: str, sop: str, number: int) -> Response:
    media = _rendered_media(request)
    (inst,) = await _held(settings, study, series, sop)
    image = await _on_frames(lambda: wado.rendered(inst, number, media))
    return Response(image, media_type=media)


@router.get("/studies/{study}/series/{series}/instances/{sop}/rendered", dependencies=[requires("read")])
async def rendered_instance(study: str, series: str, sop: str, request: Request, settings: SettingsDep) -> Response:
    return await _rendered(request, settings, study, series, sop, 1)


@router.get("/studies/{study}/series/{series}/instances/{sop}/frames/{frame}/rendered",
            dependencies=[requires("read")])
async def rendered_frame(study: str, series: str, sop: str, frame: int, request: Request,
                         settings: SettingsDep) -> Response:
    return await _rendered(request, settings, study, series, sop, frame)
