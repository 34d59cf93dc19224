"""A lean DICOM storage acceptor: C-STORE and C-ECHO, one blocking thread per association.

Why not pynetdicom's SCP: measured on 500 MR slices from one `storescu` association,
pynetdicom spent ~8 ms of CPU per instance (its DUL reader, state machine and association
reactor hand every PDU between threads that poll with 1 ms sleeps, and every command set
is decoded and encoded through pydicom) and reached ~40-60 instances/s where DCMTK's
`storescp` reaches ~400. Here one thread per association reads whole PDUs with blocking
`recv_into`, writes data fragments straight to the spool file, and answers with a command
set encoded by hand; the only waits left are the network and the store's fsyncs.

pynetdicom still does what is intricate and rare: decoding the A-ASSOCIATE-RQ, presentation
context and SCP/SCU role negotiation, and encoding the A-ASSOCIATE-AC/-RJ. The policy is
pynetdicom's acceptor policy: calling AE titles not on the list, when one is set, or an
allowed title from an address its entry does not name (dicom_synth.callers), are rejected
(1, 1, 3), more than `max_associations` at once, or more than `max_associations_per_peer`
from one address, are rejected (2, 3, 2); user identity, asynchronous operations and
extended negotiation are not answered (the peer falls back to the defaults, as with a
pynetdicom AE that binds no handlers for them).

What a peer can make us hold is bounded: connections still negotiating (at most twice
`max_associations` in all and `max_associations_per_peer` per address; more are closed at
once), the time to send the A-ASSOCIATE-RQ (ARTIM, `acse_timeout` from connect), the time
between PDUs (`idle_timeout`, then A-ABORT), and memory: a PDU's buffer grows with the
bytes that arrive, never to the length a header announces. A C-STORE whose SOP class is
not its presentation context's abstract syntax is answered 0x0122 and its data set dropped.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import socket
import ssl
import struct
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from pydicom.uid import generate_uid
from pynetdicom import build_context
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
)
from pynetdicom.presentation import PresentationContext, negotiate_as_acceptor

from dicom_synth.callers import CallerPolicy

log = logging.getLogger(__name__)

APPLICATION_CONTEXT_NAME = "1.2.840.10008.3.1.1.1"
IMPLEMENTATION_CLASS_UID = generate_uid(prefix=None, entropy_srcs=["dicom-synth storage SCP"])
IMPLEMENTATION_VERSION_NAME = "DICOM_SYNTH_1"

# PDU types (PS3.8 9.3)
_ASSOCIATE_RQ, _P_DATA_TF, _RELEASE_RQ, _RELEASE_RP, _ABORT = 0x01, 0x04, 0x05, 0x06, 0x07
_RELEASE_RP_PDU = bytes([_RELEASE_RP, 0, 0, 0, 0, 4, 0, 0, 0, 0])
_MAX_ASSOCIATE_RQ = 1 << 20
_MAX_P_DATA = 64 << 20
"""Largest P-DATA-TF accepted (peers should keep to our maximum; some overshoot it)."""

# A-ABORT sources and reasons (PS3.8 9.3.8)
_SERVICE_USER, _SERVICE_PROVIDER = 0x00, 0x02
_UNRECOGNIZED_PDU, _UNEXPECTED_PDU, _INVALID_PARAMETER = 0x01, 0x02, 0x06

# DIMSE (PS3.7 9.3 and Annex E)
C_STORE_RQ, C_ECHO_RQ, C_CANCEL_RQ = 0x0001, 0x0030, 0x0FFF
_NO_DATA_SET = 0x0101
_UNRECOGNIZED_OPERATION = 0x0211
_PROCESSING_FAILURE = 0x0110
_SOP_CLASS_NOT_SUPPORTED = 0x0122
_CANNOT_UNDERSTAND = 0xC000
# command set element numbers, group 0000
_SOP_CLASS, _COMMAND, _MESSAGE_ID, _RESPONDED_TO = 0x0002, 0x0100, 0x0110, 0x0120
_PRIORITY, _DATA_SET_TYPE, _STATUS, _ERROR_COMMENT, _SOP_INSTANCE = (
    0x0700, 0x0800, 0x0900, 0x0902, 0x1000)



@dataclass
class Peer:
    """One accepted association."""

    key: int
    """Unique within this process (never reused)."""
    address: tuple[str, int]
    calling_ae: str
    called_ae: str
    socket: socket.socket = field(repr=False)
    contexts: dict[int, str] = field(default_factory=dict)
    """Accepted presentation context ID -> transfer syntax."""
    abstract_syntaxes: dict[int, str] = field(default_factory=dict)
    """Accepted presentation context ID -> abstract syntax (SOP class)."""
    peer_max_pdu: int = 0
    """The peer's maximum P-DATA-TF length (0: no limit)."""
    stored: int = 0
    refused: int = 0
    outcome: str = "ended"
    """How it ended: released, aborted by the peer, aborted: ..., lost (for the audit trail)."""
    _send_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def send(self, data: bytes) -> None:
        with self._send_lock:
            self.socket.sendall(data)


@dataclass(frozen=True)
class StoreRequest:
    """A received C-STORE: its data set spooled to `path` as a Part 10 file."""

    message_id: int
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    priority: int
    path: Path | None
    """The spooled file; the handler may move it away (what is left is deleted after)."""
    error: OSError | None
    """Why spooling failed (e.g. ENOSPC): the file is then incomplete or missing."""


class StorageHandler(Protocol):
    """What the acceptor calls, on the association's own thread."""

    def opened(self, peer: Peer) -> None: ...

    def closed(self, peer: Peer) -> None: ...

    # optional: `rejected(calling_ae, address, reason)`, an association refused at negotiation

    def echo(self, peer: Peer) -> int: ...

    def store(self, peer: Peer, request: StoreRequest) -> tuple[int, str]:
        """The status to answer and an ErrorComment ('' for none); should not raise."""
        ...


class _Closed(Exception):
    """The peer closed the connection, released or aborted."""


class _ProtocolError(Exception):
    def __init__(self, message: str, reason: int = _UNEXPECTED_PDU) -> None:
        super().__init__(message)
        self.reason = reason


class StorageAcceptor:
    """Accepts associations for `contexts` ({abstract syntax: transfer syntaxes, preferred
    first}) on a TCP port and serves each in its own thread."""

    def __init__(
        self,
        ae_title: str,
        contexts: Mapping[str, Sequence[str]],
        handler: StorageHandler,
        *,
        max_pdu: int = 262_144,
        max_associations: int = 32,
        max_associations_per_peer: int | None = None,
        allowed_calling_aets: Iterable[str] | None = None,
        acse_timeout: float = 30.0,
        network_timeout: float | None = 60.0,
        idle_timeout: float | None = None,
        spool_dir: Path | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """`acse_timeout`: ARTIM, from connect to a whole A-ASSOCIATE-RQ (and the wait for
        the peer to close after a release or rejection). `idle_timeout`: the longest wait
        for the next PDU of an association (default `network_timeout`). `network_timeout`:
        the longest wait for more bytes of a PDU that has begun. `ssl_context`: serve DICOM
        TLS (service.tls): each connection's handshake, within the ARTIM timeout, comes
        before any PDU; one that fails (a plain association, no client certificate) is closed."""
        self.ae_title = ae_title
        self.ssl_context = ssl_context
        self.spool_dir = spool_dir
        """Where received data sets are written (default: the temporary directory)."""
        self.handler = handler
        self.max_pdu = max_pdu
        self.max_associations = max_associations
        self.max_associations_per_peer = max_associations_per_peer or max_associations
        self.max_connections = 2 * max_associations
        """Connections at once, negotiating or established; more are closed on accept."""
        self.callers = CallerPolicy(allowed_calling_aets) if allowed_calling_aets else None
        """Who may associate: AE titles, each from any address or the ones it names."""
        self.acse_timeout = acse_timeout
        self.network_timeout = network_timeout
        self.idle_timeout = idle_timeout if idle_timeout is not None else network_timeout
        self._contexts: list[PresentationContext] = [
            build_context(sop_class, list(syntaxes)) for sop_class, syntaxes in contexts.items()
        ]
        self._keys = itertools.count(1)
        self._lock = threading.Lock()
        self._active: dict[int, Peer] = {}
        self._threads: set[threading.Thread] = set()
        self._pending: dict[str, int] = {}
        """Connections per peer address that have not finished negotiating."""
        self._listening: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._stopping = False

    # server ------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._listening is None:
            raise RuntimeError("not started")
        return int(self._listening.getsockname()[1])

    @property
    def active(self) -> list[Peer]:
        with self._lock:
            return list(self._active.values())

    def start(self, host: str, port: int) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listening = socket.create_server((host, port), family=family, backlog=64)
        self._stopping = False
        self._accept_thread = threading.Thread(target=self._accept_loop, name="dicom-accept",
                                               daemon=True)
        self._accept_thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting, abort the open associations and wait for their threads."""
        self._stopping = True
        if self._listening is not None:
            try:
                self._listening.shutdown(socket.SHUT_RDWR)  # wakes accept()
            except OSError:
                pass
            self._listening.close()
        if self._accept_thread is not None:
            self._accept_thread.join(timeout)
        for peer in self.active:
            _send_quietly(peer, _abort_pdu(_SERVICE_USER, 0))
            try:
                peer.socket.shutdown(socket.SHUT_RDWR)  # wakes its recv()
            except OSError:
                pass
        deadline = time.monotonic() + timeout
        with self._lock:
            threads = list(self._threads)
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        self._accept_thread = None

    def _accept_loop(self) -> None:
        listening = self._listening
        assert listening is not None
        while not self._stopping:
            try:
                conn, address = listening.accept()
            except OSError as exc:
                if self._stopping or exc.errno in (errno.EBADF, errno.EINVAL):
                    return
                log.warning("accept failed: %s", exc)  # e.g. EMFILE: back off, keep serving
                time.sleep(0.1)
                continue
            host = str(address[0])
            t = threading.Thread(target=self._serve, args=(conn, address), daemon=True,
                                 name=f"dicom-assoc-{address[1]}")
            with self._lock:
                refusal = (
                    "too many connections" if len(self._threads) >= self.max_connections
                    else "too many pending connections from this peer"
                    if self._pending.get(host, 0) >= self.max_associations_per_peer
                    else None)
                if refusal is None:
                    self._threads.add(t)
                    self._pending[host] = self._pending.get(host, 0) + 1
            if refusal is not None:
                log.warning("connection from %s:%s closed: %s", host, address[1], refusal)
                _close(conn)
                continue
            t.start()

    # one association ---------------------------------------------------------------------

    def _serve(self, conn: socket.socket, address: tuple[str, int]) -> None:
        peer: Peer | None = None
        where = f"{address[0]}:{address[1]}"
        pending = True
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.ssl_context is not None:
                tls = self._handshake(conn, where)
                if tls is None:
                    return
                conn = tls  # closing it (finally) closes the connection
            reader = _Reader(conn)
            try:
                peer = self._negotiate(conn, reader, (str(address[0]), int(address[1])))
            finally:
                self._negotiated(str(address[0]))
                pending = False
            if peer is not None:
                where = f"{peer.calling_ae}@{where}"
                self._data_phase(peer, reader)
        except _Closed as exc:
            log.debug("association from %s: %s", where, exc)
            _ended(peer, str(exc))
        except _ProtocolError as exc:
            log.warning("aborting the association from %s: %s", where, exc)
            _ended(peer, "aborted: protocol error")
            _send_quietly(peer or conn, _abort_pdu(_SERVICE_PROVIDER, exc.reason))
        except TimeoutError:
            if peer is None:  # ARTIM expired (PS3.8 9.1.5): close without an answer
                log.warning("closing the connection from %s: no A-ASSOCIATE-RQ within %.3g s",
                            where, self.acse_timeout)
            else:
                log.warning("aborting the association from %s: idle or network timeout", where)
                _send_quietly(peer, _abort_pdu(_SERVICE_USER, 0))
                _ended(peer, "aborted: idle or network timeout")
        except OSError as exc:
            if not self._stopping:
                log.warning("association from %s lost: %s", where, exc)
            _ended(peer, "lost")
        except Exception:
            log.exception("association from %s failed", where)
            _ended(peer, "aborted: internal error")
            _send_quietly(peer or conn, _abort_pdu(_SERVICE_PROVIDER, 0))
        finally:
            _close(conn)
            if pending:
                self._negotiated(str(address[0]))
            if peer is not None:
                with self._lock:
                    self._active.pop(peer.key, None)
                log.info("association %d from %s ended: %d stored, %d refused", peer.key,
                         where, peer.stored, peer.refused)
                try:
                    self.handler.closed(peer)
                except Exception:
                    log.exception("association end not recorded")
            with self._lock:
                self._threads.discard(threading.current_thread())

    def _handshake(self, conn: socket.socket, where: str) -> ssl.SSLSocket | None:
        """The TLS handshake on an accepted connection; None (closed, reason logged) when it fails."""
        conn.settimeout(self.acse_timeout)
        try:
            tls = self.ssl_context.wrap_socket(conn, server_side=True)  # type: ignore[union-attr]
        except (ssl.SSLError, OSError) as exc:
            log.warning("TLS handshake with %s failed: %s", where, getattr(exc, "reason", None) or exc)
            _close(conn)
            return None
        log.debug("TLS %s with %s", tls.version(), where)
        return tls

    def _negotiated(self, host: str) -> None:
        with self._lock:
            left = self._pending.get(host, 0) - 1
            if left > 0:
                self._pending[host] = left
            else:
                self._pending.pop(host, None)

    def _negotiate(self, conn: socket.socket, reader: _Reader,
                   address: tuple[str, int]) -> Peer | None:
        """Read the A-ASSOCIATE-RQ and answer it: the accepted association, or None."""
        artim = time.monotonic() + self.acse_timeout
        pdu_type, length = reader.header(deadline=artim)
        if pdu_type != _ASSOCIATE_RQ:
            raise _ProtocolError(f"PDU type {pdu_type:#04x} before A-ASSOCIATE-RQ")
        if length > _MAX_ASSOCIATE_RQ:
            raise _ProtocolError(f"A-ASSOCIATE-RQ of {length} bytes", _INVALID_PARAMETER)
        body = bytes(reader.body(length, deadline=artim))
        reader.settimeout(self.acse_timeout)  # for sending the answer
        try:
            pdu = A_ASSOCIATE_RQ()
            pdu.decode(struct.pack(">BBI", pdu_type, 0, length) + body)
            rq = pdu.to_primitive()
        except Exception as exc:
            raise _ProtocolError(f"undecodable A-ASSOCIATE-RQ: {exc}", _INVALID_PARAMETER) from exc
        calling = str(rq.calling_ae_title or "").strip()
        called = str(rq.called_ae_title or "").strip()
        with self._lock:
            from_peer = sum(1 for p in self._active.values() if p.address[0] == address[0])
            busy = (len(self._active) >= self.max_associations
                    or from_peer >= self.max_associations_per_peer)
            refusal = self.callers.refusal(calling, address[0]) if self.callers is not None else None
            allowed = refusal is None
            peer = None
            if allowed and not busy:
                peer = Peer(next(self._keys), address, calling, called, conn)
                self._active[peer.key] = peer
        if peer is None:
            # (result, source, diagnostic) as pynetdicom's acceptor gives them
            rsd = (0x01, 0x01, 0x03) if not allowed else (0x02, 0x03, 0x02)
            log.warning("association from %s@%s rejected: %s", calling, address[0],
                        refusal if not allowed else
                        f"too many associations ({from_peer} from this peer)")
            rejected = getattr(self.handler, "rejected", None)
            if rejected is not None:
                try:
                    rejected(calling, address, refusal or "too many associations")
                except Exception:
                    log.exception("association rejection not recorded")
            conn.sendall(_reject_pdu(rq, *rsd))
            _await_close(conn, self.acse_timeout)
            return None

        try:
            roles = {
                item.sop_class_uid: (item.scu_role, item.scp_role)
                for item in rq.user_information
                if isinstance(item, SCP_SCU_RoleSelectionNegotiation)
            }
            results, role_items = negotiate_as_acceptor(
                rq.presentation_context_definition_list, self._contexts, roles)
            accepted = [cx for cx in results if cx.result == 0x00]
            peer.contexts = {int(cx.context_id): str(cx.transfer_syntax[0])  # type: ignore[arg-type]
                             for cx in accepted}
            peer.abstract_syntaxes = {int(cx.context_id): str(cx.abstract_syntax)  # type: ignore[arg-type]
                                      for cx in accepted}
            peer.peer_max_pdu = int(rq.maximum_length_received or 0)
            conn.sendall(self._accept_pdu(rq, results, role_items))
        except BaseException:
            with self._lock:  # not established: free its slot
                self._active.pop(peer.key, None)
            raise
        log.info("association %d from %s@%s:%d accepted: %d of %d contexts", peer.key, calling,
                 address[0], address[1], len(peer.contexts), len(results))
        try:
            self.handler.opened(peer)
        except Exception:
            log.exception("association start not recorded")
        return peer

    def _accept_pdu(self, rq: A_ASSOCIATE, results: list[PresentationContext],
                    role_items: list[SCP_SCU_RoleSelectionNegotiation]) -> bytes:
        ac = A_ASSOCIATE()
        ac.application_context_name = APPLICATION_CONTEXT_NAME
        ac.calling_ae_title = rq.calling_ae_title
        ac.called_ae_title = rq.called_ae_title
        ac.result = 0x00
        ac.result_source = 0x01
        ac.presentation_context_definition_results_list = results
        max_length = MaximumLengthNotification()
        max_length.maximum_length_received = self.max_pdu
        impl_uid = ImplementationClassUIDNotification()
        impl_uid.implementation_class_uid = IMPLEMENTATION_CLASS_UID
        impl_name = ImplementationVersionNameNotification()
        impl_name.implementation_version_name = IMPLEMENTATION_VERSION_NAME
        ac.user_information = [max_length, impl_uid, impl_name, *role_items]
        pdu = A_ASSOCIATE_AC()
        pdu.from_primitive(ac)
        return bytes(pdu.encode())

    def _data_phase(self, peer: Peer, reader: _Reader) -> None:
        """Serve P-DATA until the peer releases, aborts or goes away."""
        reader.idle_timeout, reader.network_timeout = self.idle_timeout, self.network_timeout
        command = bytearray()
        incoming: _Incoming | None = None
        try:
            while True:
                pdu_type, length = reader.header(idle=True)
                if pdu_type == _P_DATA_TF:
                    if length > _MAX_P_DATA:
                        raise _ProtocolError(f"P-DATA-TF of {length} bytes", _INVALID_PARAMETER)
                    body = reader.body(length)
                    for ctx, control, start, end in _pdvs(body, length):
                        if ctx not in peer.contexts:
                            raise _ProtocolError(f"unaccepted presentation context {ctx}",
                                                 _INVALID_PARAMETER)
                        if control & 1:  # command fragment
                            if incoming is not None:
                                raise _ProtocolError("command while a data set is pending")
                            command += body[start:end]
                            if control & 2:
                                incoming = self._command(peer, ctx, bytes(command))
                                command.clear()
                        else:
                            if incoming is None or incoming.context != ctx:
                                raise _ProtocolError("data set fragment without its command")
                            incoming.write(body[start:end])
                            if control & 2:
                                self._finish(peer, incoming)
                                incoming = None
                elif pdu_type == _RELEASE_RQ:
                    reader.body(length)
                    peer.send(_RELEASE_RP_PDU)
                    _await_close(peer.socket, self.acse_timeout)
                    raise _Closed("released")
                elif pdu_type == _ABORT:
                    reader.body(min(length, 64))
                    raise _Closed("aborted by the peer")
                elif 0x01 <= pdu_type <= 0x07:
                    raise _ProtocolError(f"unexpected PDU type {pdu_type:#04x}")
                else:
                    raise _ProtocolError(f"unrecognised PDU type {pdu_type:#04x}",
                                         _UNRECOGNIZED_PDU)
        finally:
            if incoming is not None:
                incoming.discard()

    def _command(self, peer: Peer, ctx: int, encoded: bytes) -> _Incoming | None:
        """Act on a whole command set; the pending C-STORE (or other request) when a data
        set follows."""
        try:
            cmd = _parse_command(encoded)
            field_, message_id = _us(cmd, _COMMAND), _us(cmd, _MESSAGE_ID)
            has_data = _us(cmd, _DATA_SET_TYPE) != _NO_DATA_SET
        except (KeyError, ValueError, struct.error) as exc:
            raise _ProtocolError(f"invalid command set: {exc}", _INVALID_PARAMETER) from exc
        sop_class = _uid(cmd, _SOP_CLASS)
        if field_ == C_STORE_RQ and has_data:
            sop_instance = _uid(cmd, _SOP_INSTANCE)
            abstract = peer.abstract_syntaxes.get(ctx, "")
            if sop_class != abstract:  # read its data set, store nothing, say why
                log.warning("C-STORE of %s on the context for %s from %s refused", sop_class or "-",
                            abstract, peer.calling_ae)
                request = StoreRequest(message_id, sop_class, sop_instance, "", 0, None, None)
                return _Incoming(ctx, request, None, status=_SOP_CLASS_NOT_SUPPORTED,
                                 comment=f"SOP class differs from context {ctx}'s {abstract}")
            syntax = peer.contexts[ctx]
            request = StoreRequest(message_id, sop_class, sop_instance, syntax,
                                   _us(cmd, _PRIORITY) if _PRIORITY in cmd else 0, None, None)
            spool = _Spool.open(self.spool_dir, sop_class, sop_instance, syntax)
            return _Incoming(ctx, request, spool)
        if field_ == C_CANCEL_RQ:
            return None
        if has_data:  # an operation we do not perform: read its data set, then refuse
            request = StoreRequest(message_id, sop_class, "", "", 0, None, None)
            return _Incoming(ctx, request, None, command=field_)
        if field_ == C_ECHO_RQ:
            try:
                status = int(self.handler.echo(peer))
            except Exception:
                log.exception("C-ECHO handler failed")
                status = _PROCESSING_FAILURE
        else:
            status = _UNRECOGNIZED_OPERATION if field_ != C_STORE_RQ else _CANNOT_UNDERSTAND
            log.warning("refusing DIMSE command %#06x from %s", field_, peer.calling_ae)
        self._respond(peer, ctx, field_, message_id, sop_class, "", status, "")
        return None

    def _finish(self, peer: Peer, incoming: _Incoming) -> None:
        """The data set is whole: store it and answer."""
        req = incoming.request
        if incoming.spool is None:
            if incoming.command == C_STORE_RQ:
                peer.refused += 1
            self._respond(peer, incoming.context, incoming.command, req.message_id,
                          req.sop_class_uid, req.sop_instance_uid, incoming.status,
                          incoming.comment)
            return
        incoming.spool.close()
        req = StoreRequest(req.message_id, req.sop_class_uid, req.sop_instance_uid,
                           req.transfer_syntax, req.priority, incoming.spool.path,
                           incoming.spool.error)
        try:
            status, comment = self.handler.store(peer, req)
        except Exception:
            log.exception("C-STORE handler failed for %s", req.sop_instance_uid)
            status, comment = _PROCESSING_FAILURE, "internal error"
        finally:
            incoming.discard()
        if status == 0:
            peer.stored += 1
        else:
            peer.refused += 1
        self._respond(peer, incoming.context, C_STORE_RQ, req.message_id, req.sop_class_uid,
                      req.sop_instance_uid, status, comment)

    def _respond(self, peer: Peer, ctx: int, command: int, message_id: int, sop_class: str,
                 sop_instance: str, status: int, comment: str) -> None:
        elements = []
        if sop_class:
            elements.append((_SOP_CLASS, _ui(sop_class)))
        elements += [
            (_COMMAND, struct.pack("<H", command | 0x8000)),
            (_RESPONDED_TO, struct.pack("<H", message_id)),
            (_DATA_SET_TYPE, struct.pack("<H", _NO_DATA_SET)),
            (_STATUS, struct.pack("<H", status)),
        ]
        if comment:
            elements.append((_ERROR_COMMENT, _lo(comment)))
        if sop_instance:
            elements.append((_SOP_INSTANCE, _ui(sop_instance)))
        peer.send(_p_data(ctx, _encode_command(elements), peer.peer_max_pdu))


# --- receiving --------------------------------------------------------------------------------


class _Reader:
    """Whole PDUs from a blocking socket, into one reused buffer that grows with the bytes
    received (doubling), so a header announcing 60 MiB costs nothing until they arrive."""

    _INITIAL = 65536

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._head = bytearray(6)
        self._buf = bytearray(self._INITIAL)
        self.idle_timeout: float | None = None
        """The longest wait for a PDU header when `header(idle=True)`."""
        self.network_timeout: float | None = None
        """The longest wait for each further read of a PDU that has begun."""
        self._timeout: object = object()  # the socket's timeout as last set here

    def settimeout(self, timeout: float | None) -> None:
        if timeout != self._timeout:
            self.sock.settimeout(timeout)
            self._timeout = timeout

    def _fill(self, view: memoryview, deadline: float | None = None) -> None:
        got, n = 0, len(view)
        while got < n:
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("deadline passed")
                self.settimeout(left)
            r = self.sock.recv_into(view[got:])
            if r == 0:
                raise _Closed("connection closed by the peer")
            got += r

    def header(self, *, deadline: float | None = None, idle: bool = False) -> tuple[int, int]:
        """The next PDU's (type, length): whole by `deadline`, or within the idle timeout."""
        view = memoryview(self._head)
        if idle and self.idle_timeout is not None:
            # One recv under the idle timeout (a no-op switch when it equals the network
            # timeout, as the listener sets them); a header dripped in parts gets a deadline.
            start = time.monotonic()
            self.settimeout(self.idle_timeout)
            got = self.sock.recv_into(view)
            if got == 0:
                raise _Closed("connection closed by the peer")
            if got < 6:
                self._fill(view[got:], start + self.idle_timeout)
            self.settimeout(self.network_timeout)
        else:
            self._fill(view, deadline)
            if deadline is not None:
                self.settimeout(self.network_timeout)
        pdu_type, _, length = struct.unpack(">BBI", self._head)
        return pdu_type, length

    def body(self, length: int, *, deadline: float | None = None) -> memoryview:
        """The PDU's body; valid until the next call."""
        got = 0
        while len(self._buf) < length:  # grow only as fast as the data comes
            view = memoryview(self._buf)[got:]
            self._fill(view, deadline)
            got = len(self._buf)
            grown = bytearray(min(length, 2 * got))
            grown[:got] = self._buf
            self._buf = grown
        view = memoryview(self._buf)[:length]
        self._fill(view[got:], deadline)
        return view


def _pdvs(body: memoryview, length: int) -> list[tuple[int, int, int, int]]:
    """(context ID, control header, start, end) of each PDV item of a P-DATA-TF body."""
    items, off = [], 0
    while off < length:
        if off + 6 > length:
            raise _ProtocolError("truncated PDV item", _INVALID_PARAMETER)
        item_length, ctx, control = struct.unpack_from(">IBB", body, off)
        end = off + 4 + item_length
        if item_length < 2 or end > length:
            raise _ProtocolError("PDV item runs past its PDU", _INVALID_PARAMETER)
        items.append((ctx, control, off + 6, end))
        off = end
    return items


def _parse_command(data: bytes) -> dict[int, bytes]:
    """Element number -> value of a command set (group 0000, implicit VR little endian)."""
    out, off, n = {}, 0, len(data)
    while off < n:
        group, elem, length = struct.unpack_from("<HHI", data, off)
        off += 8
        if group != 0x0000 or off + length > n:
            raise ValueError(f"element ({group:04X},{elem:04X}) malformed")
        out[elem] = data[off:off + length]
        off += length
    return out


def _us(cmd: dict[int, bytes], elem: int) -> int:
    return int(struct.unpack("<H", cmd[elem][:2])[0])


def _uid(cmd: dict[int, bytes], elem: int) -> str:
    return cmd.get(elem, b"").decode("ascii", "replace").strip("\0 ")


@dataclass
class _Incoming:
    context: int
    request: StoreRequest
    spool: _Spool | None
    """None: the data set is read and dropped, then answered `status`."""
    command: int = C_STORE_RQ
    status: int = _UNRECOGNIZED_OPERATION
    comment: str = ""

    def write(self, data: memoryview) -> None:
        if self.spool is not None:
            self.spool.write(data)

    def discard(self) -> None:
        if self.spool is not None:
            self.spool.discard()


SPOOL_PREFIX = "rx-"


class _Spool:
    """A received data set written as a Part 10 file `rx-*.dcm`. Writes never raise: the
    first error is kept and the handler answers from it (e.g. 0xA700 for ENOSPC) instead of
    the association aborting."""

    def __init__(self) -> None:
        self.fd = -1
        self.path: Path | None = None
        self.error: OSError | None = None

    @classmethod
    def open(cls, directory: Path | None, sop_class: str, sop_instance: str,
             transfer_syntax: str) -> _Spool:
        spool = cls()
        try:
            spool.fd, name = tempfile.mkstemp(prefix=SPOOL_PREFIX, suffix=".dcm", dir=directory)
            spool.path = Path(name)
        except OSError as exc:
            spool.error = exc
            return spool
        spool.write(b"\0" * 128 + b"DICM" + _file_meta(sop_class, sop_instance, transfer_syntax))
        return spool

    def write(self, data: bytes | memoryview) -> None:
        if self.error is not None or self.fd < 0:
            return
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self.fd, view):]
        except OSError as exc:
            self.error = exc

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            try:
                os.close(fd)
            except OSError as exc:
                self.error = self.error or exc

    def discard(self) -> None:
        self.close()
        if self.path is not None:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("cannot remove spool file %s: %s", self.path, exc)


# --- encoding ---------------------------------------------------------------------------------


def _ui(uid: str) -> bytes:
    raw = uid.encode("ascii", "replace")
    return raw + b"\0" if len(raw) % 2 else raw


def _lo(text: str) -> bytes:
    clean = "".join(c if " " <= c <= "~" and c != "\\" else "?" for c in text[:64])
    raw = clean.encode("ascii")
    return raw + b" " if len(raw) % 2 else raw


def _encode_command(elements: list[tuple[int, bytes]]) -> bytes:
    body = b"".join(struct.pack("<HHI", 0, elem, len(v)) + v for elem, v in elements)
    return struct.pack("<HHII", 0, 0, 4, len(body)) + body


def _p_data(ctx: int, command: bytes, peer_max: int) -> bytes:
    """P-DATA-TF PDUs carrying a command set, fragmented to the peer's maximum length."""
    step = max(peer_max - 6, 64) if peer_max else len(command)
    out = []
    for i in range(0, len(command), step):
        chunk = command[i:i + step]
        control = 0x03 if i + step >= len(command) else 0x01
        out.append(struct.pack(">BBIIBB", _P_DATA_TF, 0, len(chunk) + 6, len(chunk) + 2, ctx,
                               control) + chunk)
    return b"".join(out)


def _file_meta(sop_class: str, sop_instance: str, transfer_syntax: str) -> bytes:
    """File meta information (explicit VR little endian), with its group length."""

    def short(elem: int, vr: bytes, value: bytes) -> bytes:
        return struct.pack("<HH2sH", 0x0002, elem, vr, len(value)) + value

    version = struct.pack("<HH2s2xI", 0x0002, 0x0001, b"OB", 2) + b"\0\1"
    name = IMPLEMENTATION_VERSION_NAME.encode("ascii")
    body = b"".join((
        version,
        short(0x0002, b"UI", _ui(sop_class)),
        short(0x0003, b"UI", _ui(sop_instance)),
        short(0x0010, b"UI", _ui(transfer_syntax)),
        short(0x0012, b"UI", _ui(IMPLEMENTATION_CLASS_UID)),
        short(0x0013, b"SH", name + b" " if len(name) % 2 else name),
    ))
    return short(0x0000, b"UL", struct.pack("<I", len(body))) + body


def _abort_pdu(source: int, reason: int) -> bytes:
    return struct.pack(">BBIBBBB", _ABORT, 0, 4, 0, 0, source, reason)


def _reject_pdu(rq: A_ASSOCIATE, result: int, source: int, diagnostic: int) -> bytes:
    rj = A_ASSOCIATE()
    rj.application_context_name = APPLICATION_CONTEXT_NAME
    rj.calling_ae_title = rq.calling_ae_title
    rj.called_ae_title = rq.called_ae_title
    rj.result = result
    rj.result_source = source
    rj.diagnostic = diagnostic
    pdu = A_ASSOCIATE_RJ()
    pdu.from_primitive(rj)
    return bytes(pdu.encode())


# --- closing ----------------------------------------------------------------------------------


def _ended(peer: Peer | None, outcome: str) -> None:
    if peer is not None:
        peer.outcome = outcome


def _send_quietly(to: Peer | socket.socket, data: bytes) -> None:
    """Best effort (an abort): the peer may be gone already."""
    try:
        to.send(data) if isinstance(to, Peer) else to.sendall(data)
    except OSError:
        pass


def _await_close(sock: socket.socket, timeout: float) -> None:
    """After a release or a rejection the requestor closes the connection (PS3.8 Sta13);
    one that keeps sending is closed after `timeout` all the same."""
    deadline = time.monotonic() + timeout
    try:
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            if not sock.recv(4096):
                return
    except OSError:
        pass


def _close(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass
