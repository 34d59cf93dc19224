"""Send output files to the PACS over C-STORE, with bounded retries.

One association per attempt; each attempt sends only the files the PACS has not
acknowledged yet. A PACS that stays down, refuses us, or keeps answering failure
statuses ends in `ExportError` with a reason a person can act on: nothing loops forever.
"""

from __future__ import annotations

import logging
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pynetdicom import AE, _config, evt
from pynetdicom.association import Association
from pynetdicom.presentation import build_context
from tenacity import (
    RetryError,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from dicom_synth import metrics
from dicom_synth.domain import PacsAddress

log = logging.getLogger(__name__)

MAX_BACKOFF_SECONDS = 60.0
MAX_CONTEXTS = 128  # DICOM PS3.8: presentation context IDs are odd numbers 1..255


class ExportError(Exception):
    """The export gave up; `reason` says why, for the job record and the operator."""

    def __init__(self, reason: str, *, acknowledged: int = 0, total: int = 0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.acknowledged = acknowledged
        self.total = total


class Transient(Exception):
    """An attempt failed in a way another attempt may fix."""


def with_retries(what: str, attempt: Callable[[], None], *, retries: int, backoff_seconds: float,
                 acknowledged: list, total: int) -> int:
    """Call `attempt` until it returns, at most `retries + 1` times, waiting
    `backoff_seconds`, then twice that, and so on (capped) after each `Transient` failure;
    returns the number of attempts. Every export (C-STORE, STOW-RS) goes through here, so
    they retry, count and give up alike: ExportError with how many of `total` files were
    `acknowledged` (the list the attempts fill)."""
    if retries < 0:
        raise ValueError("retries must be >= 0")
    retrying = Retrying(
        retry=retry_if_exception_type(Transient),
        stop=stop_after_attempt(retries + 1),
        wait=wait_exponential(multiplier=backoff_seconds, min=backoff_seconds, max=MAX_BACKOFF_SECONDS),
        before_sleep=lambda rs: log.warning(
            "export to %s: attempt %d failed (%s); retrying",
            what, rs.attempt_number, rs.outcome.exception() if rs.outcome else "?",
        ),
        reraise=False,
    )
    attempts = 0
    try:
        for step in retrying:
            with step:
                attempts += 1
                metrics.EXPORT_ATTEMPTS.inc()
                attempt()
    except RetryError as exc:
        metrics.EXPORT_FAILURES.inc()
        last = exc.last_attempt.exception()
        raise ExportError(
            f"gave up after {attempts} attempt(s): {last}; {len(acknowledged)} of {total} files acknowledged",
            acknowledged=len(acknowledged), total=total,
        ) from last
    except ExportError as exc:
        metrics.EXPORT_FAILURES.inc()
        exc.acknowledged, exc.total = len(acknowledged), total
        raise
    return attempts


@dataclass
class ExportResult:
    """What the PACS acknowledged. `warnings` lists non-success statuses it still stored."""

    sent: list[Path]
    attempts: int
    seconds: float
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _File:
    path: Path
    sop_class: str
    sop_instance: str
    transfer_syntax: str


def _describe(path: Path) -> _File:
    try:
        ds = dcmread(path, stop_before_pixels=True)
        meta = ds.file_meta
        return _File(
            path,
            str(meta.MediaStorageSOPClassUID),
            str(meta.MediaStorageSOPInstanceUID),
            str(meta.TransferSyntaxUID),
        )
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a clear, permanent error
        raise ExportError(f"cannot read {path}: {exc}") from exc


def _contexts(files: Sequence[_File]) -> list:
    """One presentation context per (SOP class, transfer syntax) the files use, so each
    file goes in its own encoding, unconverted."""
    pairs = sorted({(f.sop_class, f.transfer_syntax) for f in files})
    if len(pairs) > MAX_CONTEXTS:
        raise ExportError(f"{len(pairs)} SOP class/transfer syntax pairs exceed {MAX_CONTEXTS}")
    return [build_context(sop, [ts]) for sop, ts in pairs]


def _set_nodelay(event: evt.Event) -> None:
    """Without TCP_NODELAY, small PDUs wait for delayed ACKs (~40 ms per instance)."""
    sock = event.assoc.dul.socket
    if sock is not None and sock.socket is not None:
        sock.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _status_text(status: int) -> str:
    if 0xA700 <= status <= 0xA7FF:
        return "out of resources"
    if 0xA900 <= status <= 0xA9FF:
        return "data set does not match SOP class"
    if 0xC000 <= status <= 0xCFFF:
        return "cannot understand"
    return {
        0x0117: "invalid SOP instance",
        0x0122: "SOP class not supported",
        0x0124: "not authorised",
        0x0210: "duplicate invocation",
        0x0211: "unrecognised operation",
        0x0212: "mistyped argument",
    }.get(status, "failure")


def _is_stored(status: int) -> bool:
    """Success, or a warning: the PACS kept the instance."""
    return status == 0x0000 or status == 0x0001 or 0xB000 <= status <= 0xBFFF


def _open(ae: AE, pacs: PacsAddress, files: Sequence[_File],
          tls: tuple[ssl.SSLContext, str] | None = None) -> Association:
    connected: list[bool] = []
    handlers: list[Any] = [
        (evt.EVT_CONN_OPEN, _set_nodelay),
        (evt.EVT_CONN_OPEN, lambda _e: connected.append(True)),
    ]
    ae.requested_contexts = _contexts(files)
    assoc = ae.associate(pacs.host, pacs.port, ae_title=pacs.ae_title, evt_handlers=handlers, tls_args=tls)
    if assoc.is_established:
        return assoc
    if not connected:
        raise Transient(f"cannot connect to {pacs}")
    if assoc.is_rejected:
        rsp = assoc.acceptor.primitive
        detail = f"{rsp.result_str}, {rsp.source_str}: {rsp.reason_str}" if rsp else "rejected"
        message = f"{pacs} rejected the association from {ae.ae_title} ({detail})"
        if rsp is not None and rsp.result == 0x02:  # rejected-transient
            raise Transient(message)
        raise ExportError(message)
    if assoc.is_aborted and not assoc.accepted_contexts and assoc.rejected_contexts:
        kinds = sorted({getattr(cx.abstract_syntax, "name", "?") for cx in assoc.rejected_contexts})
        raise ExportError(f"{pacs} accepts none of the proposed SOP classes/encodings: {kinds}")
    raise Transient(f"{pacs} aborted or did not answer the association request")


def _no_answer(assoc: Association, pacs: PacsAddress, calling: str, path: Path, *, first: bool) -> str:
    assoc.join(1.0)  # a peer that hangs up is seen by the DUL thread a moment later
    if assoc.is_aborted:
        hint = f" at the first C-STORE: it may refuse calling AE {calling!r}" if first else ""
        return f"{pacs} closed the association{hint} ({path.name})"
    return f"{pacs} did not answer the C-STORE of {path.name} in time"


def _attempt(
    ae: AE,
    pacs: PacsAddress,
    pending: dict[Path, _File],
    acknowledged: list[Path],
    warnings: list[str],
    tls: tuple[ssl.SSLContext, str] | None = None,
) -> None:
    """Send every pending file once on one association; remove acknowledged ones."""
    assoc = _open(ae, pacs, list(pending.values()), tls)
    failures: list[str] = []
    stored_now = 0
    try:
        for path, info in list(pending.items()):
            if not assoc.is_established:
                raise Transient(f"association to {pacs} lost after {len(acknowledged)} files")
            try:
                rsp = assoc.send_c_store(path)
            except ValueError as exc:  # no accepted context for this file: permanent
                raise ExportError(f"{pacs} cannot take {path.name}: {exc}") from exc
            status = rsp.get("Status") if rsp is not None else None
            if status is None:
                raise Transient(_no_answer(assoc, pacs, ae.ae_title, path, first=not stored_now))
            if _is_stored(int(status)):
                if status != 0x0000:
                    warnings.append(f"{info.sop_instance}: status 0x{int(status):04X}")
                del pending[path]
                acknowledged.append(path)
                stored_now += 1
            else:
                failures.append(f"{path.name}: 0x{int(status):04X} {_status_text(int(status))}")
    finally:
        if assoc.is_established:
            assoc.release()
    if failures:
        more = f" (+{len(failures) - 3} more)" if len(failures) > 3 else ""
        shown = "; ".join(failures[:3]) + more
        raise Transient(f"{pacs} refused {len(failures)} instance(s): {shown}")


def send_files(
    paths: Sequence[Path],
    pacs: PacsAddress,
    *,
    calling_ae: str,
    retries: int,
    backoff_seconds: float,
    timeout_seconds: float = 30.0,
    tls: tuple[ssl.SSLContext, str] | None = None,
) -> ExportResult:
    """C-STORE `paths` to `pacs`: at most `retries + 1` associations, waiting
    `backoff_seconds`, then twice that, and so on (capped at 60 s) between them. `tls`:
    (context, server name) for DICOM TLS (service.tls.pacs_client_context).
    Returns when every file is acknowledged; raises ExportError otherwise."""
    start = time.monotonic()
    # Stream each file's encoded bytes as stored: no decode/re-encode (2x faster here),
    # and the PACS gets exactly the bytes we wrote. Only affects sends given a path.
    _config.STORE_SEND_CHUNKED_DATASET = True
    files = [_describe(Path(p)) for p in paths]
    pending = {f.path: f for f in files}
    acknowledged: list[Path] = []
    warnings: list[str] = []
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = timeout_seconds
    ae.dimse_timeout = timeout_seconds
    ae.network_timeout = timeout_seconds
    ae.connection_timeout = min(timeout_seconds, 10.0)

    def attempt() -> None:
        if pending:
            _attempt(ae, pacs, pending, acknowledged, warnings, tls)

    try:
        attempts = with_retries(str(pacs), attempt, retries=retries, backoff_seconds=backoff_seconds,
                                acknowledged=acknowledged, total=len(files))
    finally:
        ae.shutdown()
    return ExportResult(
        sent=acknowledged, attempts=attempts, seconds=time.monotonic() - start, warnings=warnings
    )
