"""The DICOM listener over real loopback sockets with DCMTK and pynetdicom peers:
series completion timing, late and duplicate instances, concurrent associations,
negotiation refusals, bad data, a full disk."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, _config, build_context

from dicom_synth.settings import Settings
from service.completion import CompletedSeries
from service.listener import Listener
from service.store import check_part10
from tests.peers import PEER_ENV, mounted_tmpfs
from tests.test_store import MR, make_mr

HOST = "127.0.0.1"
VERIFICATION = "1.2.840.10008.1.1"


@dataclass
class Running:
    listener: Listener
    root: Path
    done: list[tuple[float, CompletedSeries]] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)

    @property
    def port(self) -> int:
        return self.listener.port

    def wait_for(self, count: int, timeout: float = 10.0) -> list[tuple[float, CompletedSeries]]:
        with self.cond:
            self.cond.wait_for(lambda: len(self.done) >= count, timeout)
            return list(self.done)


@pytest.fixture
def start_listener(tmp_path: Path) -> Iterator[Callable[..., Running]]:
    started: list[Running] = []

    def start(data_dir: Path | None = None, **overrides) -> Running:
        root = data_dir or tmp_path / f"data{len(started)}"
        settings = Settings(data_dir=root).model_copy(
            update={"dicom_port": 0, "dicom_host": HOST, **overrides})
        running: Running

        def on_complete(c: CompletedSeries) -> None:
            with running.cond:
                running.done.append((time.monotonic(), c))
                running.cond.notify_all()

        running = Running(Listener(settings, on_complete), root)
        running.listener.start()
        started.append(running)
        return running

    yield start
    for r in started:
        r.listener.stop()


def make_series(folder: Path, n: int, *, size: int = 64, skip: tuple[int, ...] = (),
                study: str | None = None, series: str | None = None) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    study, series = study or generate_uid(), series or generate_uid()
    return [make_mr(folder / f"{i:03d}.dcm", study=study, series=series, n=i, size=size)
            for i in range(1, n + 1) if i not in skip]


def storescu(port: int, files: list[Path], *, aet: str = "STORESCU",
             extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    return subprocess.run(["storescu", "-v", "-aet", aet, "-aec", "SYNTH", *extra, HOST, str(port),
                           *map(str, files)], env=PEER_ENV, capture_output=True, text=True,
                          timeout=120)


def same_data_set(a: Path, b: Path) -> bool:
    da, db = pydicom.dcmread(a), pydicom.dcmread(b)
    return da.file_meta.TransferSyntaxUID == db.file_meta.TransferSyntaxUID and (
        Dataset(da) == Dataset(db))


def scu_send(port: int, path: Path, *, aet: str = "SCU", chunked: bool = True) -> Dataset:
    """pynetdicom SCU sending the file's raw bytes (no re-encoding) in its own syntax."""
    meta = pydicom.dcmread(path, stop_before_pixels=True).file_meta
    ae = AE(ae_title=aet)
    ae.add_requested_context(meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID)
    old = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = chunked
    try:
        assoc = ae.associate(HOST, port, ae_title="SYNTH")
        assert assoc.is_established
        try:
            return assoc.send_c_store(path)
        finally:
            assoc.release()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = old


# --- completion over the wire ----------------------------------------------------------------


def test_whole_series_complete_within_a_second(start_listener, tmp_path: Path) -> None:
    run = start_listener()
    files = make_series(tmp_path / "s", 24)
    r = storescu(run.port, files)
    t_end = time.monotonic()
    assert r.returncode == 0, r.stderr
    ((t_done, c),) = run.wait_for(1)
    assert t_done - t_end < 1.0, f"announced {t_done - t_end:.2f} s after storescu ended"
    assert c.reason == "contiguous" and c.calling_ae == "STORESCU" and len(c.files) == 24
    by_sop = {p.stem: p for p in c.files}
    for f in files:
        sop = pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID
        assert same_data_set(f, by_sop[sop])


def test_incomplete_series_waits_for_quiet_then_late_instance(start_listener,
                                                              tmp_path: Path) -> None:
    run = start_listener(series_quiet_seconds=1.0)
    files = make_series(tmp_path / "s", 6, skip=(4,))
    assert storescu(run.port, files).returncode == 0
    t_end = time.monotonic()
    ((t_done, c),) = run.wait_for(1)
    # quiet counts from the last instance, a few ms before storescu exits
    assert 0.8 <= t_done - t_end < 2.0 and c.reason == "quiet" and len(c.files) == 5
    late = make_mr(tmp_path / "late.dcm", study=str(pydicom.dcmread(files[0]).StudyInstanceUID),
                   series=c.series_instance_uid, n=4)
    assert storescu(run.port, [late]).returncode == 0
    t_end = time.monotonic()
    (_, (t_done, c2)) = run.wait_for(2)
    assert c2.series_instance_uid == c.series_instance_uid and len(c2.files) == 6
    assert t_done - t_end < 1.0 and "late" in c2.reason  # now contiguous 1..6


def test_duplicate_resend_is_idempotent(start_listener, tmp_path: Path) -> None:
    run = start_listener(series_quiet_seconds=0.5)
    files = make_series(tmp_path / "s", 5)
    assert storescu(run.port, files).returncode == 0
    (_, c), = run.wait_for(1)
    assert storescu(run.port, files).returncode == 0
    time.sleep(1.2)
    assert len(run.done) == 1
    assert len(run.listener.store.series_files(c.study_instance_uid, c.series_instance_uid)) == 5


def test_one_series_over_concurrent_associations(start_listener, tmp_path: Path) -> None:
    run = start_listener()
    files = make_series(tmp_path / "s", 30)
    odd, even = files[0::2], files[1::2]  # neither half alone looks whole
    procs = [subprocess.Popen(["storescu", "-aec", "SYNTH", HOST, str(run.port),
                               *map(str, half)], env=PEER_ENV) for half in (odd, even)]
    assert [p.wait(60) for p in procs] == [0, 0]
    t_end = time.monotonic()
    ((t_done, c),) = run.wait_for(1)
    assert len(c.files) == 30 and c.reason == "contiguous" and t_done - t_end < 1.0
    time.sleep(0.5)
    assert len(run.done) == 1


def test_restart_announces_what_was_stored_but_not_announced(start_listener,
                                                             tmp_path: Path) -> None:
    data = tmp_path / "shared"
    run = start_listener(data_dir=data, series_quiet_seconds=30.0)
    files = make_series(tmp_path / "s", 3, skip=(2,))
    assert storescu(run.port, files).returncode == 0
    run.listener.stop()  # "crash" before the quiet period ends
    assert run.done == []
    again = start_listener(data_dir=data, series_quiet_seconds=0.3)
    ((_, c),) = again.wait_for(1)
    assert c.reason == "recovered" and len(c.files) == 2


# --- negotiation ----------------------------------------------------------------------------


def test_echoscu(start_listener) -> None:
    run = start_listener()
    r = subprocess.run(["echoscu", "-aec", "SYNTH", HOST, str(run.port)], env=PEER_ENV,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr


def test_unknown_calling_ae_rejected(start_listener, tmp_path: Path) -> None:
    run = start_listener(allowed_calling_aets=["PACS"])
    files = make_series(tmp_path / "s", 2)
    r = storescu(run.port, files, aet="INTRUDER")
    assert r.returncode != 0 and "Calling AE Title Not Recognized" in r.stderr + r.stdout
    assert storescu(run.port, files, aet="PACS").returncode == 0
    assert len(run.wait_for(1)[0][1].files) == 2


def _negotiate(port: int, sop_class: str, syntaxes: list[str]) -> tuple[bool, int | None]:
    """Propose one context (plus Verification, so the association stands either way);
    return whether it was accepted and, if rejected, the result code."""
    ae = AE(ae_title="SCU")
    ae.requested_contexts = [build_context(sop_class, syntaxes), build_context(VERIFICATION)]
    assoc = ae.associate(HOST, port, ae_title="SYNTH")
    assert assoc.is_established
    try:
        ours = [c for c in assoc.accepted_contexts if c.abstract_syntax == sop_class]
        rejected = [c for c in assoc.rejected_contexts if c.abstract_syntax == sop_class]
        return bool(ours), (rejected[0].result if rejected else None)
    finally:
        assoc.release()


@pytest.mark.parametrize("syntax", [ExplicitVRBigEndian, "1.2.840.10008.1.2.4.201",  # HTJ2K
                                    "1.2.840.10008.1.2.4.100"])  # MPEG2
def test_unsupported_transfer_syntax_refused_at_negotiation(start_listener, syntax: str) -> None:
    run = start_listener()
    accepted, result = _negotiate(run.port, MR, [syntax])
    assert not accepted and result == 0x04  # transfer syntaxes not supported
    assert _negotiate(run.port, MR, [syntax, ExplicitVRLittleEndian])[0]


@pytest.mark.parametrize("sop_class", ["1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture
                                       "1.2.840.10008.5.1.4.1.1.481.2"])  # RT Dose
def test_unsupported_sop_class_refused_at_negotiation(start_listener, sop_class: str) -> None:
    run = start_listener()
    accepted, result = _negotiate(run.port, sop_class, [ExplicitVRLittleEndian])
    assert not accepted and result == 0x03  # abstract syntax not supported


def test_all_four_storage_classes_and_every_syntax_accepted(start_listener) -> None:
    from service.dicom_net import STORAGE_SOP_CLASSES, TRANSFER_SYNTAXES

    run = start_listener()
    for sop_class in STORAGE_SOP_CLASSES:
        for ts in TRANSFER_SYNTAXES:
            assert _negotiate(run.port, sop_class, [ts]) == (True, None), (sop_class, ts)


# --- bad data and failures ------------------------------------------------------------------


def test_truncated_file_answers_c000_and_stores_nothing(start_listener, tmp_path: Path) -> None:
    run = start_listener()
    (f,) = make_series(tmp_path / "s", 1)
    data = f.read_bytes()
    f.write_bytes(data[:-1000])
    rsp = scu_send(run.port, f)
    assert rsp.Status == 0xC000 and "truncated" in rsp.ErrorComment
    assert not list((run.root / "store").glob("*/*/*.dcm"))
    f.write_bytes(data)  # the whole file afterwards is fine
    assert scu_send(run.port, f).Status == 0x0000


def test_sop_instance_uid_mismatch_answers_a900(start_listener, tmp_path: Path) -> None:
    run = start_listener()
    (f,) = make_series(tmp_path / "s", 1)
    ds = pydicom.dcmread(f)
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()  # the command takes this one
    ds.save_as(f)
    rsp = scu_send(run.port, f)
    assert rsp.Status == 0xA900


def test_invalid_study_uid_answers_c000(start_listener, tmp_path: Path) -> None:
    run = start_listener()
    f = make_mr(tmp_path / "bad.dcm", study="1.2.abc", series=generate_uid())
    rsp = scu_send(run.port, f)
    assert rsp.Status == 0xC000 and "StudyInstanceUID" in rsp.ErrorComment


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A 512 KiB tmpfs for the store (mounting needs root, as on the CI machine)."""
    with mounted_tmpfs(tmp_path / "tiny", "512k") as mnt:
        yield mnt


def test_full_disk_answers_a700_and_never_half_writes(start_listener, tiny_fs: Path,
                                                      tmp_path: Path) -> None:
    run = start_listener(data_dir=tiny_fs / "data", min_free_gb=0)  # ENOSPC itself, no watermark
    files = make_series(tmp_path / "s", 8, size=256)  # 8 x 128 KiB into 512 KiB
    statuses = [int(scu_send(run.port, f).Status) for f in files]
    assert 0x0000 in statuses and 0xA700 in statuses, statuses
    assert set(statuses) <= {0x0000, 0xA700}
    stored = sorted((tiny_fs / "data" / "store").glob("*/*/*.dcm"))
    assert len(stored) == statuses.count(0)
    for f in stored:
        check_part10(f)
    assert not any((tiny_fs / "data" / "store" / ".incoming").iterdir())
    r = subprocess.run(["echoscu", "-aec", "SYNTH", HOST, str(run.port)], env=PEER_ENV,
                       capture_output=True, timeout=30)
    assert r.returncode == 0  # still serving


def test_full_disk_while_spooling_answers_a700(start_listener, tiny_fs: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The receive spool (the store's `.incoming`) fills up mid data set: still a 0xA700
    answer, not an aborted association, and no spool file left behind."""
    spool = tiny_fs / "tmp"
    spool.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool))  # nothing may spool here either
    run = start_listener(data_dir=tiny_fs / "data", min_free_gb=0)  # ENOSPC itself, no watermark
    (tiny_fs / "filler").write_bytes(b"\0" * (512 * 1024 - 150 * 1024))  # room for one
    files = make_series(tmp_path / "s", 8, size=256)
    statuses = [int(scu_send(run.port, f).Status) for f in files]
    assert 0x0000 in statuses and 0xA700 in statuses, statuses
    assert set(statuses) <= {0x0000, 0xA700}
    stored = sorted((tiny_fs / "data" / "store").glob("*/*/*.dcm"))
    assert len(stored) == statuses.count(0)
    for f in stored:
        check_part10(f)
    assert list(spool.iterdir()) == []
    assert list((tiny_fs / "data" / "store" / ".incoming").iterdir()) == []


def test_stale_spool_files_removed_at_start(start_listener, tmp_path: Path) -> None:
    incoming = tmp_path / "data" / "store" / ".incoming"
    incoming.mkdir(parents=True)
    stale, fresh, other = incoming / "rx-old.dcm", incoming / "rx-new.dcm", incoming / "x.part"
    for p in (stale, fresh, other):
        p.write_bytes(b"x")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    os.utime(other, (time.time() - 3600, time.time() - 3600))
    start_listener(data_dir=tmp_path / "data")
    assert not stale.exists() and fresh.exists() and other.exists()


def test_tcp_nodelay_set_on_accepted_sockets(start_listener) -> None:
    import socket

    run = start_listener()
    seen: list[int] = []
    handlers = run.listener._handlers
    original = handlers.opened

    def spy(peer) -> None:
        original(peer)
        seen.append(peer.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    handlers.opened = spy  # the acceptor looks the handler up per association
    subprocess.run(["echoscu", "-aec", "SYNTH", HOST, str(run.port)], env=PEER_ENV, timeout=30,
                   check=True, capture_output=True)
    assert seen and all(seen)


def test_assoc_abort_mid_series_still_completes(start_listener, tmp_path: Path) -> None:
    run = start_listener(series_quiet_seconds=0.5)
    files = make_series(tmp_path / "s", 4)
    ae = AE(ae_title="SCU")
    ae.add_requested_context(MR, ExplicitVRLittleEndian)
    assoc = ae.associate(HOST, run.port, ae_title="SYNTH")
    for f in files[:2]:
        assert assoc.send_c_store(pydicom.dcmread(f)).Status == 0
    assoc.abort()
    ((_, c),) = run.wait_for(1)
    assert len(c.files) == 2


def test_serve_forever_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    import signal
    import socket
    import sys

    with socket.socket() as s:
        s.bind((HOST, 0))
        port = s.getsockname()[1]
    env = {**os.environ, "SYNTH_DICOM_PORT": str(port), "SYNTH_DICOM_HOST": HOST,
           "SYNTH_DATA_DIR": str(tmp_path / "data")}
    code = ("from dicom_synth.settings import Settings\n"
            "from service.listener import serve_forever\n"
            "serve_forever(Settings(), lambda c: print('complete', len(c.files), flush=True))\n")
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=repo, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            r = subprocess.run(["echoscu", "-aec", "SYNTH", HOST, str(port)], env=PEER_ENV,
                               capture_output=True, timeout=30)
            if r.returncode == 0 or time.monotonic() > deadline or proc.poll() is not None:
                break
            time.sleep(0.2)
        assert r.returncode == 0, proc.stderr.read() if proc.poll() is not None else r.stderr
        assert storescu(port, make_series(tmp_path / "s", 3)).returncode == 0
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert line.strip() == "complete 3"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# --- what the listener stores, and how much (issue 15) ----------------------------------------

IMPLICIT = "1.2.840.10008.1.2"


def _raw_scu(port: int):
    from tests.raw_scu import RawSCU

    return RawSCU(HOST, port, [(MR, ExplicitVRLittleEndian), (MR, IMPLICIT)])


@pytest.mark.parametrize("name", ["rtplan.dcm", "test-SR.dcm", "waveform_ecg.dcm"])
def test_other_classes_on_the_mr_context_are_refused(start_listener, name: str) -> None:
    """RT Plan, SR and ECG were stored with an MR file meta. Sent as MR (the command
    matches the context) the data set contradicts it: 0xA900; sent as what they are on the
    MR context: 0x0122. Nothing is stored either way."""
    from pydicom.data import get_testdata_file

    from tests.raw_scu import data_set_bytes

    run = start_listener()
    path = Path(get_testdata_file(name, download=False))
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    ctx = 3 if ds.file_meta.TransferSyntaxUID == IMPLICIT else 1
    _, body = data_set_bytes(path.read_bytes())
    scu = _raw_scu(run.port)
    status, comment = scu.store(ctx, MR, ds.SOPInstanceUID, body)
    assert status == 0xA900 and "not MR Image Storage" in comment
    status, _ = scu.store(ctx, ds.SOPClassUID, ds.SOPInstanceUID, body)
    assert status == 0x0122
    assert scu.echo(1) == 0
    scu.release()
    assert not list(run.listener.store.iter_series())


def _nested(depth: int) -> bytes:
    """(0040,A730) sequences nested `depth` deep, undefined lengths, explicit VR LE."""
    open_ = b"\x40\x00\x30\xa7SQ\x00\x00\xff\xff\xff\xff" + b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
    close = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00" + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    return open_ * depth + close * depth


def test_nested_sequence_bomb_is_0xc000(start_listener, tmp_path: Path) -> None:
    """600 levels answered 0x0110 (a caught RecursionError); now 0xC000 with the reason.
    A few levels (as real data nests) are stored."""
    from tests.raw_scu import data_set_bytes

    run = start_listener()
    scu = _raw_scu(run.port)
    for depth, expected in ((600, 0xC000), (33, 0xC000), (5, 0x0000)):
        src = make_mr(tmp_path / f"n{depth}.dcm", study=generate_uid(), series=generate_uid())
        _, body = data_set_bytes(src.read_bytes())
        sop = pydicom.dcmread(src, stop_before_pixels=True).SOPInstanceUID
        status, comment = scu.store(1, MR, sop, body + _nested(depth))
        assert status == expected, (depth, hex(status), comment)
        if expected:
            assert "nested deeper" in comment
    assert scu.echo(1) == 0
    scu.release()


def test_pixel_and_series_limits_answer_a700(start_listener, tmp_path: Path) -> None:
    run = start_listener(max_instance_pixels=32 * 32, max_series_instances=3)
    big = make_series(tmp_path / "big", 1, size=64)
    small = make_series(tmp_path / "small", 5, size=32)
    status = scu_send(run.port, big[0])
    assert status.Status == 0xA700 and "SYNTH_MAX_INSTANCE_PIXELS" in status.ErrorComment
    statuses = [scu_send(run.port, f) for f in small]
    assert [int(s.Status) for s in statuses] == [0, 0, 0, 0xA700, 0xA700]
    assert "SYNTH_MAX_SERIES_INSTANCES=3" in statuses[-1].ErrorComment
    assert scu_send(run.port, small[0]).Status == 0  # a re-send of a stored one is taken
    hdr = pydicom.dcmread(small[0], stop_before_pixels=True)
    assert len(run.listener.store.series_files(hdr.StudyInstanceUID, hdr.SeriesInstanceUID)) == 3


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_announced_pdu_lengths_do_not_allocate(tmp_path: Path) -> None:
    """The listener process (python -m service.listener_main): sixteen associations each
    send a P-DATA-TF header announcing 60 MiB and 1 KiB of it. RSS used to grow by the
    announced 960 MiB; the buffers now grow with the bytes received (64 KiB initial each),
    so RSS grows by less than 16 MiB in all."""
    import socket
    import struct

    from tests.raw_scu import RawSCU

    with socket.socket() as s:
        s.bind((HOST, 0))
        port = s.getsockname()[1]
    env = {**os.environ, "SYNTH_DATA_DIR": str(tmp_path / "data"), "SYNTH_DICOM_PORT": str(port),
           "SYNTH_DICOM_HOST": HOST, "SYNTH_DICOM_MAX_ASSOCIATIONS_PER_PEER": "32"}
    env.pop("SYNTH_BROKER_URL", None)
    proc = subprocess.Popen([sys.executable, "-m", "service.listener_main"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    scus = []
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                warm = RawSCU(HOST, port, [(VERIFICATION, IMPLICIT)])
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, "listener did not start"
                time.sleep(0.1)
        assert warm.echo(1) == 0
        time.sleep(0.3)
        before = _rss_kib(proc.pid)
        for _ in range(16):
            scu = RawSCU(HOST, port, [(MR, ExplicitVRLittleEndian)])
            scu.sock.sendall(struct.pack(">BBI", 0x04, 0, 60 << 20) + bytes(1024))
            scus.append(scu)
        time.sleep(1.0)
        grown = _rss_kib(proc.pid) - before
        print(f"listener RSS {before} KiB, +{grown} KiB after 16 PDUs announcing 60 MiB each")
        assert grown < 16 * 1024, f"RSS grew by {grown} KiB"
        assert warm.echo(1) == 0  # still serving
        warm.release()
    finally:
        for scu in scus:
            scu.sock.close()
        proc.terminate()
        proc.wait(10)


def test_slowloris_peers_cannot_lock_others_out(start_listener, tmp_path: Path) -> None:
    """The real listener with its settings: one peer (127.0.0.1) opens 30 silent
    connections and as many idle associations as it may; another peer (127.0.0.2) still
    stores a series meanwhile. The silent ones are closed at the ARTIM time, the idle
    associations aborted at the idle timeout, and then the first peer gets in again."""
    import socket

    from tests.raw_scu import RawSCU, read_pdu

    run = start_listener(dicom_max_associations=4, dicom_max_associations_per_peer=2,
                         dicom_acse_timeout=1.0, dicom_idle_timeout=1.5)
    silent = [socket.create_connection((HOST, run.port)) for _ in range(30)]
    idle = []
    for _ in range(6):
        try:
            idle.append(RawSCU(HOST, run.port, [(VERIFICATION, IMPLICIT)]))
        except ConnectionError:
            pass  # rejected or closed: this peer has its share
    assert len(idle) <= 2
    other = AE(ae_title="OTHER")
    other.add_requested_context(MR, ExplicitVRLittleEndian)
    files = make_series(tmp_path / "s", 4)
    t0 = time.monotonic()
    assoc = other.associate(HOST, run.port, ae_title="SYNTH", bind_address=("127.0.0.2", 0))
    assert assoc.is_established, "a second peer was locked out"
    assert [int(assoc.send_c_store(f).Status) for f in files] == [0, 0, 0, 0]
    assoc.release()
    for scu in idle:
        kind, _ = read_pdu(scu.sock)
        assert kind == 0x07  # A-ABORT after the idle timeout
        scu.sock.close()
    assert time.monotonic() - t0 < 10
    for s in silent:
        s.settimeout(5)
        try:
            assert s.recv(1) == b""  # closed, without an answer
        except ConnectionResetError:
            pass
        s.close()
    r = subprocess.run(["echoscu", "-aec", "SYNTH", HOST, str(run.port)], env=PEER_ENV,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr


def test_associations_are_audited_and_counted(start_listener, tmp_path: Path) -> None:
    """Each association leaves one audit event (calling AE, address, counts, duration, how it
    ended), a rejected one too; the Prometheus counters move with it."""
    from prometheus_client import REGISTRY

    from dicom_synth.audit import AuditTrail

    def count(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    before = {"stored": count("synth_instances_total", status="0x0000"),
              "rejected": count("synth_associations_total", outcome="rejected"),
              "accepted": count("synth_associations_total", outcome="accepted")}
    run = start_listener(allowed_calling_aets=["PACS", "SCU"])
    files = make_series(tmp_path / "s", 3)
    assert storescu(run.port, files[:1], aet="INTRUDER").returncode != 0
    assert storescu(run.port, files[:2], aet="PACS").returncode == 0
    ae = AE(ae_title="SCU")
    ae.add_requested_context(MR, ExplicitVRLittleEndian)
    assoc = ae.associate(HOST, run.port, ae_title="SYNTH")
    assert assoc.send_c_store(pydicom.dcmread(files[2])).Status == 0
    assoc.abort()
    trail = AuditTrail(run.listener.settings.jobs_db_url)
    deadline = time.monotonic() + 10
    while len(events := trail.events(kind="association")) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    by_who = {e["who"]: e for e in events}
    assert set(by_who) == {"INTRUDER", "PACS", "SCU"}
    assert by_who["INTRUDER"]["outcome"].startswith("rejected: ")
    assert (by_who["PACS"]["outcome"], by_who["PACS"]["detail"]["stored"], by_who["PACS"]["detail"]["refused"]) == (
        "released", 2, 0)
    assert by_who["SCU"]["outcome"] == "aborted by the peer" and by_who["SCU"]["detail"]["stored"] == 1
    assert all(e["address"] == HOST and (e["detail"].get("seconds") or 0) >= 0 for e in events)
    assert count("synth_instances_total", status="0x0000") - before["stored"] == 3
    assert count("synth_associations_total", outcome="rejected") - before["rejected"] == 1
    assert count("synth_associations_total", outcome="accepted") - before["accepted"] == 2
