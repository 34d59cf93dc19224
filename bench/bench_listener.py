"""Listener throughput next to DCMTK storescp, on the same files sent by the same storescu.

    .venv/bin/python bench/bench_listener.py [--files 500] [--size 256] [--repeat 3] [--dir D] [--tls]

Generates N MR slices (size x size, uint16) with pydicom, then per round sends all of them
with one `storescu` association (TCP_NODELAY=1) to: DCMTK `storescp` (writes, no fsync),
our `Listener` (check, fsync file and directory, atomic link, completion tracking), and
our Listener with fsync disabled (to show what durability costs; not a real mode). Rounds
alternate the servers, so load from other processes hits all alike. Prints per server the
median instances/s, the ratio to storescp, the server's CPU time per instance (user+sys,
all its threads: what it costs, whatever else runs on the machine) and the time from the
end of storescu to the series' announcement. With --tls, also our Listener's DICOM TLS
port (storescu +tls with a client certificate, TLS 1.2+ from a test CA), in the same rounds.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dicom_synth.settings import Settings  # noqa: E402
from service.listener import Listener  # noqa: E402
from tests.peers import PEER_ENV as ENV  # noqa: E402  (DCMTK's tools, not pynetdicom's look-alikes)

MR = "1.2.840.10008.5.1.4.1.1.4"
HOST = "127.0.0.1"


def make_files(folder: Path, n: int, size: int) -> list[Path]:
    study, series = generate_uid(), generate_uid()
    rng = np.random.default_rng(0)
    out = []
    for i in range(1, n + 1):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = MR
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.SOPClassUID, ds.Modality = MR, "MR"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.PatientName, ds.PatientID = "BENCH^LISTENER", "BENCH"
        ds.InstanceNumber = i
        ds.ImagePositionPatient = [0.0, 0.0, 1.5 * i]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness = [0.9, 0.9], 1.5
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = rng.integers(0, 4096, (size, size), dtype=np.uint16).tobytes()
        p = folder / f"{i:04d}.dcm"
        ds.save_as(p, enforce_file_format=True)
        out.append(p)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def send(port: int, files: list[Path], called: str, tls_args: tuple[str, ...] = ()) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(["storescu", "-aec", called, *tls_args, HOST, str(port), *map(str, files)],
                       env=ENV, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"storescu failed: {r.stderr[-1000:]}")
    return dt


def run_storescp(files: list[Path], work: Path) -> dict[str, Any]:
    out = work / "storescp"
    out.mkdir()
    port = free_port()
    proc = subprocess.Popen(["storescp", "-od", str(out), str(port)], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection((HOST, port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        cpu0 = _proc_cpu(proc.pid)
        dt = send(port, files, "ANY-SCP")
        cpu = _proc_cpu(proc.pid) - cpu0
    finally:
        proc.terminate()
        proc.wait(10)
    stored = len(list(out.iterdir()))
    shutil.rmtree(out)
    return {"seconds": dt, "stored": stored, "announce": None, "cpu": cpu}


def _proc_cpu(pid: int) -> float:
    """User + system CPU seconds of a running process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)  # this process: the listener's threads
    return r.ru_utime + r.ru_stime


@contextmanager
def fsync_disabled(disabled: bool):
    real = os.fsync
    if disabled:
        os.fsync = lambda fd: None  # type: ignore[assignment]
    try:
        yield
    finally:
        os.fsync = real


def run_listener(files: list[Path], work: Path, *, no_fsync: bool = False, pki: Any = None) -> dict[str, Any]:
    """Our listener; with `pki` (a tests.tlscerts.TestCA) over its DICOM TLS port."""
    data = work / "listener"
    done = threading.Event()
    announced: list[float] = []

    def on_complete(c: Any) -> None:
        if len(c.files) == len(files):
            announced.append(time.perf_counter())
            done.set()

    settings = Settings(data_dir=data).model_copy(update={"dicom_port": 0, "dicom_host": HOST})
    tls_args: tuple[str, ...] = ()
    if pki is not None:
        server, client = pki.issue("bench-listener"), pki.issue("bench-scu", server=False)
        settings = settings.model_copy(update={
            "dicom_tls_port": 0, "dicom_plain": "off", "dicom_tls_certificate": server.cert,
            "dicom_tls_private_key": server.key, "dicom_tls_ca_certificates": pki.cert})
        tls_args = ("+tls", str(client.key), str(client.cert), "+cf", str(pki.cert))
    listener = Listener(settings, on_complete)
    with fsync_disabled(no_fsync):
        listener.start()
        try:
            cpu0 = _self_cpu()
            port = listener.tls_port if pki is not None else listener.port
            dt = send(int(port or 0), files, settings.ae_title, tls_args)
            t_end = time.perf_counter()
            cpu = _self_cpu() - cpu0
            done.wait(30)
        finally:
            listener.stop()
    stored = len(list((data / "store").glob("*/*/*.dcm")))
    shutil.rmtree(data)
    return {"seconds": dt, "stored": stored, "cpu": cpu,
            "announce": (announced[0] - t_end) if announced else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=500)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=None,
                    help="where to put the files and both servers' output (default: the "
                         "temporary directory)")
    ap.add_argument("--tls", action="store_true", help="also the Listener over DICOM TLS")
    args = ap.parse_args()
    if shutil.which("storescu", path=ENV["PATH"]) is None or shutil.which("storescp", path=ENV["PATH"]) is None:
        sys.exit("needs DCMTK (apt-get install dcmtk)")

    import logging

    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="bench-listener-", dir=args.dir) as tmp:
        work = Path(tmp)
        src = work / "src"
        src.mkdir()
        files = make_files(src, args.files, args.size)
        mb = sum(f.stat().st_size for f in files) / 1e6
        servers: dict[str, Callable[[], dict[str, Any]]] = {
            "DCMTK storescp (no fsync)": lambda: run_storescp(files, work),
            "dicom-synth Listener": lambda: run_listener(files, work),
            "Listener, fsync off (reference)": lambda: run_listener(files, work, no_fsync=True),
        }
        if args.tls:
            from tests.tlscerts import TestCA

            pki = TestCA(work / "pki")
            servers["dicom-synth Listener over TLS"] = lambda: run_listener(files, work, pki=pki)
        results: dict[str, list[dict[str, Any]]] = {k: [] for k in servers}
        for _ in range(args.repeat):
            for name, fn in servers.items():  # interleaved, so load changes hit all alike
                results[name].append(fn())

    base = statistics.median(len(files) / r["seconds"] for r in results[next(iter(servers))])
    print(f"\n{args.files} MR slices {args.size}x{args.size} uint16 ({mb:.1f} MB), one storescu "
          f"association each, median of {args.repeat}, {os.cpu_count()} CPUs, "
          f"under {args.dir or tempfile.gettempdir()}\n")
    print(f"{'server':34} {'stored':>7} {'seconds':>8} {'inst/s':>8} {'vs storescp':>12} "
          f"{'CPU ms/inst':>12} {'announce after end':>19}")
    for name, runs in results.items():
        rate = statistics.median(len(files) / r["seconds"] for r in runs)
        secs = statistics.median(r["seconds"] for r in runs)
        stored = min(r["stored"] for r in runs)
        ann = [r["announce"] for r in runs if r["announce"] is not None]
        ann_s = f"{statistics.median(ann):.3f} s" if ann else "-"
        cpu_ms = statistics.median(r["cpu"] for r in runs) / len(files) * 1e3
        print(f"{name:34} {stored:7d} {secs:8.2f} {rate:8.1f} {rate / base:11.2f}x "
              f"{cpu_ms:12.2f} {ann_s:>19}")
        print(f"{'':34} {'rounds:':>7} " + ", ".join(
            f"{len(files) / r['seconds']:.0f}" for r in runs) + " inst/s")
    if args.tls:
        plain = statistics.median(len(files) / r["seconds"] for r in results["dicom-synth Listener"])
        tls = statistics.median(len(files) / r["seconds"] for r in results["dicom-synth Listener over TLS"])
        print(f"\nListener over TLS / plain: {tls / plain:.2f}x ({tls:.0f} vs {plain:.0f} inst/s)")


if __name__ == "__main__":
    main()
