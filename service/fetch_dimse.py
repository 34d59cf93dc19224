"""Query and retrieve one series from a DIMSE PACS (pynetdicom SCU, Study Root model).

- `find_instances`: C-FIND at IMAGE level, the series' instances (SOPInstanceUID and the
  header values the pixel limit needs, where the PACS answers them);
- `get_series`: C-GET, the instances arriving as C-STOREs on our own association (our
  storage contexts proposed with the SCP role), each written as a Part 10 file;
- `move_series`: C-MOVE to an AE title the PACS knows (ours: our listener stores them).

Every failure is a `FetchError`: the PACS cannot be reached or refuses us (502), does not
answer within the deadline (504), or fails the operation (502, with its status); a
C-MOVE refused before anything moved is `MoveRefused` (a PACS that does not know the
destination answers 0xA801, Orthanc 0xC000 with no sub-operation; Orthanc aborts a move
asked by an AE it does not know).
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset
from pynetdicom import AE, build_context, build_role, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from dicom_synth.domain import PacsAddress
from dicom_synth.supported import SOP_CLASSES
from service import dicom_net
from service.uploads import UploadError

_PENDING = (0xFF00, 0xFF01)
_MOVE_DESTINATION_UNKNOWN = 0xA801
_LIMIT_KEYWORDS = ("Rows", "Columns", "NumberOfFrames", "SamplesPerPixel")


class FetchError(UploadError):
    """A series by reference could not be fetched: HTTP status and the reason."""


class MoveRefused(FetchError):
    """The C-MOVE failed before any instance moved (e.g. the destination is unknown)."""

    def __init__(self, reason: str) -> None:
        super().__init__(502, reason)


@dataclass(frozen=True)
class Peer:
    """The PACS and how we talk to it."""

    pacs: PacsAddress
    calling_ae: str
    deadline: float
    """time.monotonic() past which the whole fetch gives up (504)."""
    tls: tuple[ssl.SSLContext, str] | None = None

    def left(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise FetchError(504, f"{self.pacs} did not finish within SYNTH_PACS_FETCH_TIMEOUT_SECONDS")
        return left


def _series_identifier(study: str, series: str, level: str = "SERIES") -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    return ds


def _associate(peer: Peer, contexts: list, *, ext_neg: list | None = None,
               handlers: list | None = None) -> tuple[AE, Association]:
    timeout = peer.left()
    ae = AE(ae_title=peer.calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.connection_timeout = min(timeout, 10.0)
    ae.requested_contexts = contexts
    connected: list[bool] = []
    assoc = ae.associate(peer.pacs.host, peer.pacs.port, ae_title=peer.pacs.ae_title, ext_neg=ext_neg,
                         evt_handlers=[(evt.EVT_CONN_OPEN, lambda _e: connected.append(True)), *(handlers or [])],
                         tls_args=peer.tls)
    if assoc.is_established:
        return ae, assoc
    ae.shutdown()
    if not connected:
        raise FetchError(502, f"cannot connect to the PACS {peer.pacs}")
    rsp = assoc.acceptor.primitive if assoc.is_rejected else None
    if rsp is not None:
        raise FetchError(502, f"the PACS {peer.pacs} rejected the association from {peer.calling_ae} "
                              f"({rsp.result_str}, {rsp.source_str}: {rsp.reason_str})")
    raise FetchError(502, f"the PACS {peer.pacs} aborted or did not answer the association request")


def _final(peer: Peer, assoc: Association, what: str,
           responses: Iterator[tuple[Dataset, Dataset | None]],
           on_pending: Callable[[Dataset | None], None] = lambda _i: None) -> Dataset:
    """The final response status of a C-FIND/C-GET/C-MOVE; pending ones go to `on_pending`."""
    for status, identifier in responses:
        if "Status" not in status:
            if time.monotonic() >= peer.deadline:
                raise FetchError(504, f"the PACS {peer.pacs} did not finish the {what} within "
                                      "SYNTH_PACS_FETCH_TIMEOUT_SECONDS")
            raise FetchError(502, f"the PACS {peer.pacs} aborted or did not answer the {what}")
        if int(status.Status) in _PENDING:
            on_pending(identifier)
            if time.monotonic() >= peer.deadline:
                assoc.abort()
                peer.left()
            continue
        return status
    raise FetchError(502, f"the PACS {peer.pacs} ended the {what} without a final status")


def _failure(peer: Peer, what: str, status: Dataset) -> FetchError:
    code = int(status.Status)
    failed = status.get("NumberOfFailedSuboperations")
    done = status.get("NumberOfCompletedSuboperations")
    counts = f"; {failed} sub-operation(s) failed, {done} completed" if failed is not None else ""
    comment = f" ({status.ErrorComment})" if status.get("ErrorComment") else ""
    return FetchError(502, f"the PACS {peer.pacs} answered the {what} with status 0x{code:04X}{comment}{counts}")


def find_instances(peer: Peer, study: str, series: str) -> list[Dataset]:
    """The series' instances as the PACS lists them (empty: it has no such series)."""
    ae, assoc = _associate(peer, [build_context(StudyRootQueryRetrieveInformationModelFind)])
    query = _series_identifier(study, series, "IMAGE")
    query.SOPInstanceUID = ""
    for keyword in _LIMIT_KEYWORDS:
        setattr(query, keyword, None)
    found: list[Dataset] = []
    try:
        status = _final(peer, assoc, "C-FIND",
                        assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind),
                        lambda ident: found.append(ident) if ident is not None else None)
        if int(status.Status) != 0x0000:
            raise _failure(peer, "C-FIND", status)
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()
    return found


def limit_values(identifier: Dataset) -> dict:
    """The pixel limit's header values a C-FIND answer gives (absent ones count 1)."""
    out = {}
    for keyword in _LIMIT_KEYWORDS:
        value = identifier.get(keyword)
        if value not in (None, ""):
            out[keyword] = value
    return out


class _Receiver:
    """The C-STORE handler of a C-GET: each instance written to `dest`, within limits."""

    def __init__(self, dest: Path, max_instances: int, max_bytes: int) -> None:
        self.dest, self.max_instances, self.max_bytes = dest, max_instances, max_bytes
        self.files: list[Path] = []
        self.bytes = 0
        self.over: str | None = None

    def __call__(self, event: evt.Event) -> int:
        if self.over is not None:
            return dicom_net.OUT_OF_RESOURCES
        if len(self.files) >= self.max_instances:
            self.over = f"more than SYNTH_MAX_SERIES_INSTANCES={self.max_instances} instances"
            return dicom_net.OUT_OF_RESOURCES
        data = event.encoded_dataset()
        self.bytes += len(data)
        if self.bytes > self.max_bytes:
            self.over = f"series larger than SYNTH_MAX_UPLOAD_BYTES={self.max_bytes}"
            return dicom_net.OUT_OF_RESOURCES
        path = self.dest / f"get-{len(self.files):05d}.dcm"
        try:
            path.write_bytes(data)
        except OSError:
            return dicom_net.OUT_OF_RESOURCES
        self.files.append(path)
        return dicom_net.SUCCESS


def get_series(peer: Peer, study: str, series: str, dest: Path, *, max_instances: int,
               max_bytes: int) -> list[Path]:
    """C-GET the series into `dest`; returns the files written (the caller checks them)."""
    storage = sorted(SOP_CLASSES)
    contexts = [build_context(StudyRootQueryRetrieveInformationModelGet),
                *(build_context(uid, list(dicom_net.TRANSFER_SYNTAXES)) for uid in storage)]
    receiver = _Receiver(dest, max_instances, max_bytes)
    ae, assoc = _associate(peer, contexts, ext_neg=[build_role(uid, scp_role=True) for uid in storage],
                           handlers=[(evt.EVT_C_STORE, receiver)])
    try:
        status = _final(peer, assoc, "C-GET",
                        assoc.send_c_get(_series_identifier(study, series), StudyRootQueryRetrieveInformationModelGet))
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()
    if receiver.over is not None:
        raise FetchError(413, receiver.over)
    if int(status.Status) != 0x0000:
        raise _failure(peer, "C-GET", status)
    return receiver.files


def move_series(peer: Peer, study: str, series: str, destination: str) -> Dataset:
    """C-MOVE the series to `destination`; returns the final status (success)."""
    ae, assoc = _associate(peer, [build_context(StudyRootQueryRetrieveInformationModelMove)])
    pending: list[bool] = []
    try:
        status = _final(peer, assoc, "C-MOVE",
                        assoc.send_c_move(_series_identifier(study, series), destination,
                                          StudyRootQueryRetrieveInformationModelMove),
                        lambda _i: pending.append(True))
    except FetchError as exc:
        if exc.status_code == 502 and not pending:  # Orthanc aborts a move from an AE it does not know
            raise MoveRefused(f"{exc.reason} request (no sub-operation began)") from exc
        raise
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()
    code = int(status.Status)
    if code == _MOVE_DESTINATION_UNKNOWN:
        raise MoveRefused(f"the PACS {peer.pacs} does not know the move destination {destination}")
    if code != 0x0000:
        failure = _failure(peer, "C-MOVE", status)
        if not status.get("NumberOfCompletedSuboperations"):
            raise MoveRefused(failure.reason)
        raise failure
    return status
