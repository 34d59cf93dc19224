"""Query and retrieve one series from a DICOMweb PACS: QIDO-RS for its instances, WADO-RS
for the instances themselves (multipart/related, read part by part to files by
`service.dicomweb.multipart`, bounded by the upload and series limits).

The standard library's HTTP client, as the STOW-RS exporter uses (no runtime dependency).
Failures are `FetchError`s: 404 when the PACS has no such series, 502 when it cannot be
reached or answers wrongly, 504 past the deadline, 413 past a limit.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dicom_synth.domain import DicomWebAddress
from service.dicomweb.multipart import MultipartError, read_parts_from, related_boundary
from service.fetch_dimse import FetchError

_LIMIT_TAGS = {"00280010": "Rows", "00280011": "Columns", "00280008": "NumberOfFrames",
               "00280002": "SamplesPerPixel"}
_SOP_INSTANCE_UID = "00080018"
_ACCEPT_DICOM = 'multipart/related; type="application/dicom"; transfer-syntax=*'


def _open(pacs: DicomWebAddress, path: str, accept: str, deadline: float, what: str) -> Any:
    left = deadline - time.monotonic()
    if left <= 0:
        raise FetchError(504, f"the PACS {pacs} did not finish within SYNTH_PACS_FETCH_TIMEOUT_SECONDS")
    request = urllib.request.Request(f"{pacs.url}{path}", headers={"Accept": accept})
    try:
        return urllib.request.urlopen(request, timeout=left)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 404:
            raise FetchError(404, f"the PACS {pacs} has no such series ({what} answered 404)") from exc
        raise FetchError(502, f"the PACS {pacs} answered the {what} with HTTP {exc.code}") from exc
    except TimeoutError as exc:
        raise FetchError(504, f"the PACS {pacs} did not answer the {what} in time") from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, TimeoutError):
            raise FetchError(504, f"the PACS {pacs} did not answer the {what} in time") from exc
        raise FetchError(502, f"cannot reach the PACS {pacs}: {reason}") from exc


def find_instances(pacs: DicomWebAddress, study: str, series: str, deadline: float) -> list[dict]:
    """QIDO-RS: the series' instances, each {"SOPInstanceUID", and the pixel limit's
    header values the PACS gives}; empty when it has no such series."""
    fields = "&".join(f"includefield={tag}" for tag in _LIMIT_TAGS)
    with _open(pacs, f"/studies/{study}/series/{series}/instances?{fields}", "application/dicom+json",
               deadline, "QIDO-RS search") as rsp:
        body = rsp.read()
    try:
        answer = json.loads(body) if body.strip() else []
    except ValueError as exc:
        raise FetchError(502, f"the PACS {pacs} answered the QIDO-RS search with no DICOM JSON") from exc
    if not isinstance(answer, list):
        raise FetchError(502, f"the PACS {pacs} answered the QIDO-RS search with no list of instances")
    out = []
    for item in answer:
        values = {"SOPInstanceUID": _first(item, _SOP_INSTANCE_UID)}
        values.update({kw: v for tag, kw in _LIMIT_TAGS.items() if (v := _first(item, tag)) is not None})
        out.append(values)
    return out


def _first(item: Any, tag: str) -> Any:
    try:
        return (item.get(tag, {}).get("Value") or [None])[0]
    except AttributeError:
        return None


def retrieve_series(pacs: DicomWebAddress, study: str, series: str, dest: Path, deadline: float, *,
                    max_bytes: int, max_instances: int) -> list[Path]:
    """WADO-RS: the series' instances written to files in `dest`."""
    with _open(pacs, f"/studies/{study}/series/{series}", _ACCEPT_DICOM, deadline, "WADO-RS retrieval") as rsp:
        try:
            boundary = related_boundary(rsp.headers.get("Content-Type", ""))
            parts = read_parts_from(_chunks(rsp, pacs, deadline), boundary, dest,
                                    max_bytes=max_bytes, max_parts=max_instances)
        except MultipartError as exc:
            if exc.status_code == 413:
                raise FetchError(413, exc.reason) from exc
            raise FetchError(502, f"the PACS {pacs} answered the WADO-RS retrieval wrongly: {exc.reason}") from exc
    return [p.path for p in parts]


def _chunks(rsp: Any, pacs: DicomWebAddress, deadline: float) -> Iterator[bytes]:
    while True:
        try:
            chunk = rsp.read(1 << 20)
        except TimeoutError as exc:
            raise FetchError(504, f"the PACS {pacs} stalled sending the series") from exc
        except OSError as exc:
            raise FetchError(502, f"the PACS {pacs} broke off sending the series: {exc}") from exc
        if not chunk:
            return
        yield chunk
        if time.monotonic() > deadline:
            raise FetchError(504, f"the PACS {pacs} did not send the series within "
                                  "SYNTH_PACS_FETCH_TIMEOUT_SECONDS")
