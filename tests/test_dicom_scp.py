"""The storage acceptor at the protocol level: fragmented PDUs and command sets, limits,
operations it does not perform, aborts, timeouts and stopping. Peers are pynetdicom and a
raw socket speaking PS3.8 directly."""

from __future__ import annotations

import shutil
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, build_context
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification

from service import dicom_scp
from service.dicom_scp import Peer, StorageAcceptor, StoreRequest
from tests.test_store import MR, make_mr

HOST = "127.0.0.1"
VERIFICATION = "1.2.840.10008.1.1"


class Recorder:
    """A handler that keeps what it was given."""

    def __init__(self, keep: Path) -> None:
        self.keep = keep
        self.opened_peers: list[Peer] = []
        self.closed_peers: list[Peer] = []
        self.stored: list[tuple[StoreRequest, Path | None]] = []
        self.release = threading.Event()
        self.release.set()
        self.ended = threading.Event()

    def opened(self, peer: Peer) -> None:
        self.opened_peers.append(peer)

    def closed(self, peer: Peer) -> None:
        self.closed_peers.append(peer)
        self.ended.set()

    def echo(self, peer: Peer) -> int:
        return 0

    def store(self, peer: Peer, request: StoreRequest) -> tuple[int, str]:
        self.release.wait(10)
        kept = None
        if request.path is not None:
            kept = self.keep / f"{len(self.stored)}.dcm"
            shutil.copy(request.path, kept)
        self.stored.append((request, kept))
        return 0, ""


@pytest.fixture
def spool_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    spool = tmp_path / "spool"
    spool.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool))
    return spool


@pytest.fixture
def make_acceptor(tmp_path: Path, spool_dir: Path) -> Iterator:
    started: list[StorageAcceptor] = []

    def make(**kwargs) -> tuple[StorageAcceptor, Recorder]:
        keep = tmp_path / f"kept{len(started)}"
        keep.mkdir()
        rec = Recorder(keep)
        acc = StorageAcceptor("SYNTH", {MR: [ExplicitVRLittleEndian], VERIFICATION: [
            "1.2.840.10008.1.2"]}, rec, **kwargs)
        acc.start(HOST, 0)
        started.append(acc)
        return acc, rec

    yield make
    for acc in started:
        acc.stop()


def test_tiny_pdus_split_command_and_data_sets(make_acceptor, tmp_path: Path) -> None:
    acc, rec = make_acceptor(max_pdu=128)  # the command set alone needs two PDUs
    src = make_mr(tmp_path / "a.dcm", study=generate_uid(), series=generate_uid(), size=16)
    ae = AE(ae_title="SCU")
    ae.add_requested_context(MR, ExplicitVRLittleEndian)
    assoc = ae.associate(HOST, acc.port, ae_title="SYNTH")
    assert assoc.is_established
    assert assoc.acceptor.maximum_length == 128
    status = assoc.send_c_store(pydicom.dcmread(src))
    assoc.release()
    assert status.Status == 0
    ((req, kept),) = rec.stored
    assert req.sop_instance_uid == pydicom.dcmread(src).SOPInstanceUID
    assert req.transfer_syntax == ExplicitVRLittleEndian and req.error is None
    got, want = pydicom.dcmread(kept), pydicom.dcmread(src)
    assert got.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert got.file_meta.MediaStorageSOPInstanceUID == want.SOPInstanceUID
    assert pydicom.Dataset(got) == pydicom.Dataset(want)
    assert rec.ended.wait(5) and len(rec.closed_peers) == 1


def test_too_many_associations_rejected_like_pynetdicom(make_acceptor) -> None:
    acc, rec = make_acceptor(max_associations=1)
    ae = AE(ae_title="SCU")
    ae.add_requested_context(VERIFICATION)
    first = ae.associate(HOST, acc.port, ae_title="SYNTH")
    assert first.is_established
    second = ae.associate(HOST, acc.port, ae_title="SYNTH")
    assert second.is_rejected
    rj = second.acceptor.primitive
    assert (rj.result, rj.result_source, rj.diagnostic) == (0x02, 0x03, 0x02)
    first.release()
    third = ae.associate(HOST, acc.port, ae_title="SYNTH")
    assert third.is_established  # the slot is free again once the first has ended
    assert third.send_c_echo().Status == 0
    third.release()


def test_unlisted_calling_ae_rejected(make_acceptor) -> None:
    acc, rec = make_acceptor(allowed_calling_aets=["PACS"])
    ae = AE(ae_title="INTRUDER")
    ae.add_requested_context(VERIFICATION)
    assoc = ae.associate(HOST, acc.port, ae_title="SYNTH")
    assert assoc.is_rejected
    rj = assoc.acceptor.primitive
    assert (rj.result, rj.result_source, rj.diagnostic) == (0x01, 0x01, 0x03)
    assert rec.opened_peers == []


# --- a raw peer ---------------------------------------------------------------------------


def _associate(port: int, contexts: list[tuple[str, str]]) -> tuple[socket.socket, dict[int, int]]:
    rq = A_ASSOCIATE()
    rq.application_context_name = "1.2.840.10008.3.1.1.1"
    rq.calling_ae_title, rq.called_ae_title = "RAW", "SYNTH"
    cxs = []
    for i, (abstract, syntax) in enumerate(contexts):
        cx = build_context(abstract, [syntax])
        cx.context_id = 2 * i + 1
        cxs.append(cx)
    rq.presentation_context_definition_list = cxs
    ml = MaximumLengthNotification()
    ml.maximum_length_received = 16384
    rq.user_information = [ml]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(rq)
    sock = socket.create_connection((HOST, port), timeout=10)
    sock.sendall(pdu.encode())
    kind, body = _read_pdu(sock)
    assert kind == 0x02
    ac = A_ASSOCIATE_AC()
    ac.decode(struct.pack(">BBI", kind, 0, len(body)) + body)
    results = {cx.context_id: cx.result for cx in ac.to_primitive()
               .presentation_context_definition_results_list}
    return sock, results


def _read_pdu(sock: socket.socket) -> tuple[int, bytes]:
    head = _read_exact(sock, 6)
    kind, _, length = struct.unpack(">BBI", head)
    return kind, _read_exact(sock, length)


def _read_exact(sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise ConnectionError("closed")
        out += chunk
    return out


def _command(elements: list[tuple[int, bytes]]) -> bytes:
    return dicom_scp._encode_command(elements)


def _pdv(ctx: int, control: int, data: bytes) -> bytes:
    return struct.pack(">IBB", len(data) + 2, ctx, control) + data


def _p_data(*pdvs: bytes) -> bytes:
    body = b"".join(pdvs)
    return struct.pack(">BBI", 0x04, 0, len(body)) + body


def _response(body: bytes) -> dict[int, bytes]:
    length, ctx, control = struct.unpack_from(">IBB", body, 0)
    assert control == 0x03
    return dicom_scp._parse_command(body[6:4 + length])


def test_unsupported_operation_answered_0211_and_its_data_set_skipped(make_acceptor) -> None:
    acc, rec = make_acceptor()
    sock, results = _associate(acc.port, [(MR, ExplicitVRLittleEndian)])
    assert results == {1: 0}
    c_find = _command([(0x0002, dicom_scp._ui(MR)), (0x0100, struct.pack("<H", 0x0020)),
                       (0x0110, struct.pack("<H", 7)), (0x0700, struct.pack("<H", 0)),
                       (0x0800, struct.pack("<H", 0x0000))])
    sock.sendall(_p_data(_pdv(1, 0x03, c_find)))
    sock.sendall(_p_data(_pdv(1, 0x00, b"\x08\x00\x52\x00\x00\x00\x00\x00"), _pdv(1, 0x02, b"")))
    kind, body = _read_pdu(sock)
    rsp = _response(body)
    assert kind == 0x04
    assert struct.unpack("<H", rsp[0x0100])[0] == 0x8020
    assert struct.unpack("<H", rsp[0x0120])[0] == 7
    assert struct.unpack("<H", rsp[0x0900])[0] == 0x0211
    sock.sendall(bytes([0x05, 0, 0, 0, 0, 4, 0, 0, 0, 0]))  # A-RELEASE-RQ
    kind, _ = _read_pdu(sock)
    assert kind == 0x06
    sock.close()
    assert rec.stored == []


def test_abort_mid_data_set_leaves_no_spool_file(make_acceptor, spool_dir: Path) -> None:
    acc, rec = make_acceptor()
    sock, _ = _associate(acc.port, [(MR, ExplicitVRLittleEndian)])
    sop = generate_uid()
    c_store = _command([(0x0002, dicom_scp._ui(MR)), (0x0100, struct.pack("<H", 0x0001)),
                        (0x0110, struct.pack("<H", 1)), (0x0700, struct.pack("<H", 0)),
                        (0x0800, struct.pack("<H", 0x0000)), (0x1000, dicom_scp._ui(sop))])
    sock.sendall(_p_data(_pdv(1, 0x03, c_store), _pdv(1, 0x00, b"\x08\x00" * 100)))
    deadline = time.monotonic() + 5
    while not list(spool_dir.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert list(spool_dir.iterdir())  # being spooled
    sock.sendall(struct.pack(">BBIBBBB", 0x07, 0, 4, 0, 0, 0, 0))  # A-ABORT
    assert rec.ended.wait(5)
    sock.close()
    assert rec.stored == []
    assert list(spool_dir.iterdir()) == []


def test_data_on_an_unaccepted_context_aborts(make_acceptor) -> None:
    acc, rec = make_acceptor()
    sock, results = _associate(acc.port, [("1.2.840.10008.5.1.4.1.1.7", ExplicitVRLittleEndian)])
    assert results[1] != 0  # secondary capture is not ours
    sock.sendall(_p_data(_pdv(1, 0x03, b"\0" * 12)))
    kind, body = _read_pdu(sock)
    assert kind == 0x07
    assert rec.ended.wait(5)
    sock.close()


def test_idle_association_aborted_after_network_timeout(make_acceptor) -> None:
    acc, rec = make_acceptor(network_timeout=0.3)
    sock, _ = _associate(acc.port, [(MR, ExplicitVRLittleEndian)])
    t0 = time.monotonic()
    kind, _ = _read_pdu(sock)
    assert kind == 0x07 and time.monotonic() - t0 < 5
    assert rec.ended.wait(5)
    sock.close()


def test_stop_aborts_open_associations_promptly(make_acceptor, tmp_path: Path) -> None:
    acc, rec = make_acceptor()
    ae = AE(ae_title="SCU")
    ae.add_requested_context(VERIFICATION)
    assoc = ae.associate(HOST, acc.port, ae_title="SYNTH")
    assert assoc.is_established
    port = acc.port
    t0 = time.monotonic()
    acc.stop()
    assert time.monotonic() - t0 < 3
    deadline = time.monotonic() + 5
    while assoc.is_established and time.monotonic() < deadline:
        time.sleep(0.05)
    assert assoc.is_aborted
    with pytest.raises(OSError):
        socket.create_connection((HOST, port), timeout=1).close()


def test_extended_negotiation_items_are_tolerated(make_acceptor, tmp_path: Path) -> None:
    """Role selection is answered; user identity and asynchronous operations proposals are
    left unanswered (the defaults apply), as by a pynetdicom AE without handlers."""
    from pynetdicom.pdu_primitives import (
        AsynchronousOperationsWindowNegotiation,
        SCP_SCU_RoleSelectionNegotiation,
        UserIdentityNegotiation,
    )

    acc, rec = make_acceptor()
    role = SCP_SCU_RoleSelectionNegotiation()
    role.sop_class_uid, role.scu_role, role.scp_role = MR, True, False
    user = UserIdentityNegotiation()
    user.user_identity_type, user.primary_field = 1, b"radiographer"
    window = AsynchronousOperationsWindowNegotiation()
    window.maximum_number_operations_invoked = 4
    window.maximum_number_operations_performed = 4
    ae = AE(ae_title="SCU")
    ae.add_requested_context(MR, ExplicitVRLittleEndian)
    assoc = ae.associate(HOST, acc.port, ae_title="SYNTH", ext_neg=[role, user, window])
    assert assoc.is_established
    src = make_mr(tmp_path / "a.dcm", study=generate_uid(), series=generate_uid())
    assert assoc.send_c_store(src).Status == 0
    assoc.release()
    assert len(rec.stored) == 1


# --- slowloris and hostile peers (issue 15) ---------------------------------------------------

def _closed_within(sock: socket.socket, seconds: float) -> bool:
    """True when the listener closes `sock` (EOF or reset) within `seconds`."""
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass
        return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def test_artim_closes_a_negotiation_that_never_finishes(make_acceptor) -> None:
    """Nothing sent, a header cut short, and a request dripped a byte at a time: each is
    closed once the ARTIM time from connect has passed, even while bytes still arrive."""
    from tests.raw_scu import associate_rq

    acc, rec = make_acceptor(acse_timeout=0.5)
    silent = socket.create_connection((HOST, acc.port))
    cut = socket.create_connection((HOST, acc.port))
    cut.sendall(b"\x01\x00\x00")
    drip = socket.create_connection((HOST, acc.port))
    rq = associate_rq([(MR, ExplicitVRLittleEndian)])
    t0 = time.monotonic()
    for b in rq[:20]:
        try:
            drip.sendall(bytes([b]))
        except OSError:
            break
        time.sleep(0.1)
    assert _closed_within(drip, 3) and time.monotonic() - t0 < 3
    assert _closed_within(silent, 3) and _closed_within(cut, 3)
    assert time.monotonic() - t0 < 4
    for s in (silent, cut, drip):
        s.close()
    assert rec.opened_peers == []
    ae = AE(ae_title="SCU")
    ae.add_requested_context(VERIFICATION)
    assoc = ae.associate(HOST, acc.port, ae_title="SYNTH")
    assert assoc.is_established and assoc.send_c_echo().Status == 0
    assoc.release()


def test_pending_connections_are_capped_per_peer_and_in_all(make_acceptor) -> None:
    """1000 silent connections held 1003 threads before; now a peer gets at most
    `max_associations_per_peer` pending, the listener at most 2 x `max_associations`
    connections, and the rest are closed at once."""
    acc, rec = make_acceptor(max_associations=4, max_associations_per_peer=3, acse_timeout=30)
    threads_before = threading.active_count()
    held = [socket.create_connection((HOST, acc.port)) for _ in range(40)]
    try:
        time.sleep(0.5)
        open_ = [s for s in held if not _closed_within(s, 0.05)]
        assert len(open_) == 3
        assert threading.active_count() - threads_before <= 3
    finally:
        for s in held:
            s.close()
    deadline = time.monotonic() + 5
    ae = AE(ae_title="SCU")
    ae.add_requested_context(VERIFICATION)
    while True:  # the closed ones' threads end (their reads see EOF), freeing the slots
        assoc = ae.associate(HOST, acc.port, ae_title="SYNTH")
        if assoc.is_established or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert assoc.is_established
    assoc.release()


def test_associations_per_peer_rejected_transient(make_acceptor) -> None:
    acc, rec = make_acceptor(max_associations=8, max_associations_per_peer=2)
    ae = AE(ae_title="SCU")
    ae.add_requested_context(VERIFICATION)
    first, second = (ae.associate(HOST, acc.port, ae_title="SYNTH") for _ in range(2))
    assert first.is_established and second.is_established
    third = ae.associate(HOST, acc.port, ae_title="SYNTH")
    assert third.is_rejected
    rj = third.acceptor.primitive
    assert (rj.result, rj.result_source, rj.diagnostic) == (0x02, 0x03, 0x02)
    first.release()
    second.release()


def test_idle_timeout_aborts_idle_associations_not_busy_ones(make_acceptor) -> None:
    """32 idle associations used to lock everyone out: each idle one is aborted after the
    idle timeout; one that keeps echoing lives on; then new peers get in."""
    from tests.raw_scu import RawSCU, read_pdu

    acc, rec = make_acceptor(max_associations=4, idle_timeout=0.6, network_timeout=10)
    idle = [RawSCU(HOST, acc.port, [(VERIFICATION, "1.2.840.10008.1.2")]) for _ in range(3)]
    busy = RawSCU(HOST, acc.port, [(VERIFICATION, "1.2.840.10008.1.2")])
    t0 = time.monotonic()
    while time.monotonic() - t0 < 1.5:
        assert busy.echo(1) == 0
        time.sleep(0.2)
    for scu in idle:
        kind, _ = read_pdu(scu.sock)
        assert kind == 0x07  # A-ABORT
        scu.sock.close()
    assert busy.echo(1) == 0
    busy.release()
    ae = AE(ae_title="SCU")
    ae.add_requested_context(VERIFICATION)
    assoc = ae.associate(HOST, acc.port, ae_title="SYNTH")
    assert assoc.is_established
    assoc.release()


def test_c_store_of_another_class_than_its_context_is_0122(make_acceptor, tmp_path: Path) -> None:
    """The command says RT Plan on the MR context: answered 0x0122, its data set read and
    dropped, nothing handed to the handler, and the association goes on."""
    from tests.raw_scu import RawSCU, data_set_bytes

    acc, rec = make_acceptor()
    src = make_mr(tmp_path / "a.dcm", study=generate_uid(), series=generate_uid())
    _, body = data_set_bytes(src.read_bytes())
    scu = RawSCU(HOST, acc.port, [(MR, ExplicitVRLittleEndian)])
    status, comment = scu.store(1, "1.2.840.10008.5.1.4.1.1.481.5", generate_uid(), body)
    assert status == 0x0122 and "context" in comment
    assert rec.stored == []
    sop = pydicom.dcmread(src).SOPInstanceUID
    assert scu.store(1, MR, sop, body) == (0, "")
    scu.release()
    assert len(rec.stored) == 1
