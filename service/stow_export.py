"""Send output files to a DICOMweb PACS by STOW-RS, with the same bounded retries and
the same `ExportError` as the C-STORE exporter (`service.export`).

One POST per attempt to `<url>/studies`, each carrying only the instances the PACS has
not acknowledged yet (from the ReferencedSOPSequence of earlier answers). A connection
that fails, a 5xx or 429, or instances in FailedSOPSequence are retried; a 4xx other
than those (the PACS will never take this request: auth, content type, conflict on every
instance) ends it at once, as a rejected association does.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

from pydicom import dcmread

from dicom_synth.domain import DicomWebAddress
from service.export import ExportError, ExportResult, Transient, with_retries

log = logging.getLogger(__name__)
_REFERENCED, _FAILED, _SOP, _REASON = "00081199", "00081198", "00081155", "00081197"


def _sop_instance_uid(path: Path) -> str:
    try:
        return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
    except Exception as exc:  # noqa: BLE001 - an unreadable output is a permanent error
        raise ExportError(f"cannot read {path}: {exc}") from exc


def _body(paths: Sequence[Path], boundary: str) -> tuple[int, Iterator[bytes]]:
    """(length, chunks) of a multipart/related body, one file read at a time."""
    heads = [f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() for _ in paths]
    tail = f"--{boundary}--\r\n".encode()
    length = sum(len(h) + p.stat().st_size + 2 for h, p in zip(heads, paths, strict=True)) + len(tail)

    def chunks() -> Iterator[bytes]:
        for head, path in zip(heads, paths, strict=True):
            yield head
            yield path.read_bytes()
            yield b"\r\n"
        yield tail

    return length, chunks()


def _post(pacs: DicomWebAddress, paths: Sequence[Path], timeout: float) -> tuple[int, dict]:
    boundary = uuid.uuid4().hex
    length, body = _body(paths, boundary)
    request = urllib.request.Request(
        f"{pacs.url}/studies", data=body, method="POST",
        headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                 "Content-Length": str(length), "Accept": "application/dicom+json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as rsp:
            status, text = rsp.status, rsp.read()
    except urllib.error.HTTPError as exc:
        status, text = exc.code, exc.read()
    except (urllib.error.URLError, OSError) as exc:
        raise Transient(f"cannot reach {pacs}: {getattr(exc, 'reason', exc)}") from exc
    try:
        answer = json.loads(text) if text else {}
    except ValueError:
        answer = {}
    return status, answer if isinstance(answer, dict) else {}


def _uids_in(answer: dict, tag: str) -> dict[str, int | None]:
    out: dict[str, int | None] = {}
    for item in answer.get(tag, {}).get("Value", []) or []:
        uid = (item.get(_SOP, {}).get("Value") or [""])[0]
        reason = (item.get(_REASON, {}).get("Value") or [None])[0]
        out[uid] = reason
    return out


def _attempt(pacs: DicomWebAddress, pending: dict[str, Path], acknowledged: list[Path], timeout: float) -> None:
    status, answer = _post(pacs, list(pending.values()), timeout)
    if status in (200, 202, 409):
        stored = _uids_in(answer, _REFERENCED)
        if status == 200 and not stored and not answer.get(_FAILED):
            stored = dict.fromkeys(pending)  # a PACS that answers 200 without a body stored all
        for uid in list(pending):
            if uid in stored:
                acknowledged.append(pending.pop(uid))
        if not pending:
            return
        failed = _uids_in(answer, _FAILED)
        shown = "; ".join(f"{uid}: 0x{reason:04X}" if isinstance(reason, int) else uid
                          for uid, reason in list(failed.items())[:3])
        raise Transient(f"{pacs} answered {status} and did not store {len(pending)} instance(s)"
                         + (f" ({shown})" if shown else ""))
    if status >= 500 or status == 429:
        raise Transient(f"{pacs} answered {status}")
    raise ExportError(f"{pacs} refused the STOW-RS request with HTTP {status}")


def send_files(paths: Sequence[Path], pacs: DicomWebAddress, *, retries: int, backoff_seconds: float,
               timeout_seconds: float = 60.0) -> ExportResult:
    """STOW-RS `paths` to `pacs`: at most `retries + 1` requests with exponential backoff
    (as `service.export.send_files`). Returns when every instance is acknowledged;
    raises ExportError otherwise."""
    start = time.monotonic()
    pending = {_sop_instance_uid(Path(p)): Path(p) for p in paths}
    acknowledged: list[Path] = []

    def attempt() -> None:
        if pending:
            _attempt(pacs, pending, acknowledged, timeout_seconds)

    attempts = with_retries(f"{pacs} (STOW-RS)", attempt, retries=retries, backoff_seconds=backoff_seconds,
                            acknowledged=acknowledged, total=len(pending))
    return ExportResult(sent=acknowledged, attempts=attempts, seconds=time.monotonic() - start)
