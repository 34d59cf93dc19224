"""The DICOM listener: a pynetdicom C-STORE / C-ECHO SCP writing into the series store.

Each received data set is spooled to disk by pynetdicom (`STORE_RECV_CHUNKED_DATASET`,
no decode), checked and moved durably into the store, and only then answered 0x0000.
Failures answer a failure status with an ErrorComment: 0xA700 when the store cannot write
(full disk), 0xC000 for unreadable or truncated data, 0xA900 when the data set's
SOPInstanceUID contradicts the request. Completed series go to `on_complete`.
"""

from __future__ import annotations

import itertools
import logging
import signal
import socket
import threading
from collections.abc import Callable
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, _config, evt
from pynetdicom.transport import ThreadedAssociationServer

from dicom_synth.settings import Settings
from service import dicom_net
from service.completion import CompletedSeries, CompletionTracker
from service.store import InvalidInstance, SeriesStore, is_out_of_space

log = logging.getLogger(__name__)

MAX_PDU = 262_144
"""Our receive PDU size: larger PDUs mean fewer round trips per instance."""


def _status(code: int, comment: str = "") -> Dataset:
    ds = Dataset()
    ds.Status = code
    if comment:
        ds.ErrorComment = comment[:64]
    return ds


class _Handlers:
    """Event handlers bound to one listener; small, return statuses, never raise."""

    def __init__(self, store: SeriesStore, tracker: CompletionTracker) -> None:
        self.store = store
        self.tracker = tracker
        self._keys: dict[int, int] = {}
        self._counter = itertools.count(1)
        self._lock = threading.Lock()

    def conn_open(self, event: evt.Event) -> None:
        """Disable Nagle on the accepted socket and give the association a unique key."""
        try:
            assoc_socket = event.assoc.dul.socket
            sock = assoc_socket.socket if assoc_socket is not None else None
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except Exception:  # an option we cannot set must not lose the association
            log.warning("could not set TCP_NODELAY", exc_info=True)
        with self._lock:
            self._keys[id(event.assoc)] = next(self._counter)

    def conn_close(self, event: evt.Event) -> None:
        with self._lock:
            key = self._keys.pop(id(event.assoc), None)
        if key is not None:
            try:
                self.tracker.association_ended(key)
            except Exception:
                log.exception("association end not recorded")

    def c_echo(self, event: evt.Event) -> int:
        return dicom_net.SUCCESS

    def c_store(self, event: evt.Event) -> Dataset | int:
        calling_ae = event.assoc.requestor.ae_title
        spool_failed = dicom_net.spool_error(event.request)
        if spool_failed is not None:
            log.error("cannot spool an instance from %s: %s", calling_ae, spool_failed)
            reason = "disk full" if is_out_of_space(spool_failed) else "spool error"
            return _status(dicom_net.OUT_OF_RESOURCES, reason)
        try:
            path = event.dataset_path
            expected_sop = str(getattr(event.request, "AffectedSOPInstanceUID", "") or "")
            inst = self.store.put(path, expected_sop_instance_uid=expected_sop or None)
        except InvalidInstance as exc:
            log.warning("refused an instance from %s: %s", calling_ae, exc)
            code = (dicom_net.DATA_SET_DOES_NOT_MATCH_SOP_CLASS if exc.mismatch
                    else dicom_net.CANNOT_UNDERSTAND)
            return _status(code, str(exc))
        except OSError as exc:
            log.error("store cannot write an instance from %s: %s", calling_ae, exc)
            reason = "store full" if is_out_of_space(exc) else f"store error {exc.errno}"
            return _status(dicom_net.OUT_OF_RESOURCES, reason)
        except Exception as exc:
            log.exception("unexpected failure storing an instance from %s", calling_ae)
            return _status(dicom_net.PROCESSING_FAILURE, f"{type(exc).__name__}")
        with self._lock:
            key = self._keys.get(id(event.assoc))
        try:
            self.tracker.instance_stored(inst, calling_ae, key)
        except Exception:  # stored durably: recovery at restart still announces it
            log.exception("series tracking failed for %s", inst.sop_instance_uid)
        return dicom_net.SUCCESS


def build_ae(settings: Settings) -> AE:
    """The application entity with our contexts and limits."""
    ae = AE(ae_title=settings.ae_title)
    for sop_class in dicom_net.STORAGE_SOP_CLASSES:
        ae.add_supported_context(sop_class, list(dicom_net.TRANSFER_SYNTAXES))
    ae.add_supported_context(dicom_net.VERIFICATION)
    ae.maximum_pdu_size = MAX_PDU
    ae.maximum_associations = 32
    if settings.allowed_calling_aets:
        ae.require_calling_aet = list(settings.allowed_calling_aets)
    return ae


class Listener:
    """Serves C-STORE and C-ECHO in background threads; announces completed series."""

    def __init__(self, settings: Settings,
                 on_complete: Callable[[CompletedSeries], None]) -> None:
        self.settings = settings
        self.store = SeriesStore(settings.store_dir)
        self.tracker = CompletionTracker(
            self.store, on_complete,
            quiet_seconds=settings.series_quiet_seconds,
            grace_seconds=settings.series_grace_seconds,
        )
        self._handlers = _Handlers(self.store, self.tracker)
        self._ae = build_ae(settings)
        self._server: ThreadedAssociationServer | None = None

    @property
    def port(self) -> int:
        """The bound port (differs from settings when those ask for port 0)."""
        if self._server is None:
            return self.settings.dicom_port
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Announce series left from a previous run, then serve; returns at once."""
        if self._server is not None:
            return
        _config.STORE_RECV_CHUNKED_DATASET = True
        dicom_net.install_tolerant_spool()
        self.tracker.recover()
        self.tracker.start()
        h = self._handlers
        handlers: list[Any] = [
            (evt.EVT_C_STORE, h.c_store),
            (evt.EVT_C_ECHO, h.c_echo),
            (evt.EVT_CONN_OPEN, h.conn_open),
            (evt.EVT_CONN_CLOSE, h.conn_close),
        ]
        self._server = self._ae.start_server(
            (self.settings.dicom_host, self.settings.dicom_port), block=False,
            evt_handlers=handlers,
        )
        log.info("DICOM listener %s on %s:%d, store %s", self.settings.ae_title,
                 self.settings.dicom_host, self.port, self.store.root)

    def stop(self) -> None:
        """Stop accepting, end open associations, stop announcing (stored series that were
        not announced yet are announced by the next start)."""
        if self._server is not None:
            for assoc in self._server.active_associations:
                assoc.abort()
            self._server.shutdown()
            self._server = None
        self.tracker.stop()


def serve_forever(settings: Settings, on_complete: Callable[[CompletedSeries], None]) -> None:
    """Process entry point: serve until SIGINT or SIGTERM."""
    done = threading.Event()
    listener = Listener(settings, on_complete)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    listener.start()
    try:
        while not done.wait(1.0):
            pass
    finally:
        listener.stop()
