"""A seeded fuzz corpus through both doors: no 5xx, no processing failure, no crash.

2000+ distinct files are made from a few real and phantom files by byte flips,
truncation, wrong element lengths, bogus transfer syntaxes and SOP classes in the file
meta or data set, inserted and deleted runs, and nested-sequence bombs. Every one is
posted to the real gateway process over HTTP (POST /synthesize, one keep-alive client; a
real redis-server takes the jobs of those that are accepted) and C-STOREd to a real
listener over one raw association (the data set's bytes as they are, on the context of
its original transfer syntax, or of the other one for the transfer-syntax mutations).
The answers must be 2xx/4xx and known DICOM statuses; the listener keeps answering
C-ECHO, on the same association and on a new one.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import struct
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from dicom_synth.settings import Settings
from models.dce.phantom_dicom import write_phantom_series
from service.listener import Listener
from tests.conftest import REALDATA
from tests.peers import PEER_ENV
from tests.raw_scu import RawSCU, data_set_bytes
from tests.test_store import make_mr

HOST = "127.0.0.1"
IMPLICIT = "1.2.840.10008.1.2"
VERIFICATION = "1.2.840.10008.1.1"
CORPUS_SIZE = 2400
SEED = 15
FUZZ_TOKEN = "fuzz-doors-admin-token"  # SYNTH_API_TOKEN of the gateway under test
BOGUS_SYNTAXES = [b"1.2.3.4", b"1.2.840.10008.1.2.2", b"1.2.840.10008.1.2.4.100", b"1.2.840.10008.1.2.4.201",
                  b"", b"\xff\xfe\x00garbage", b"1" * 64, b"1.2.840.10008.5.1.4.1.1.4"]
BOGUS_CLASSES = [b"1.2.840.10008.5.1.4.1.1.481.5", b"1.2.840.10008.5.1.4.1.1.88.33", b"1.2.3", b"",
                 b"1.2.840.10008.1.1", b"\x00\x01\x02"]
DICOM_STATUSES = {0x0000, 0x0122, 0xA700, 0xA900, 0xC000}
"""Every answer a data set may get; 0x0110 (processing failure) would be our bug."""


def seed_files(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    seeds = [make_mr(folder / "mr.dcm", study=generate_uid(), series=generate_uid(), size=48)]
    seeds += write_phantom_series(folder / "phantom", seed=15, n_slices=1, size=48)
    for name in ("MR_small.dcm", "MR_small_implicit.dcm", "CT_small.dcm"):
        seeds.append(Path(shutil.copy(get_testdata_file(name, download=False), folder / name)))
    seeds.append(REALDATA / "pydicom_data" / "emri_small.dcm")  # real enhanced MR, read in place
    return seeds


def _elements(data: bytes, start: int, explicit: bool) -> list[tuple[int, int, int]]:
    """(offset of the length field, its size, value length) of top-level elements."""
    out, off = [], start
    while off + 8 <= len(data):
        vr = data[off + 4:off + 6]
        if explicit and vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN", b"OD", b"OL", b"UC", b"UR"):
            if off + 12 > len(data):
                break
            (length,) = struct.unpack_from("<I", data, off + 8)
            out.append((off + 8, 4, length))
            off += 12
        elif explicit:
            (length,) = struct.unpack_from("<H", data, off + 6)
            out.append((off + 6, 2, length))
            off += 8
        else:
            (length,) = struct.unpack_from("<I", data, off + 4)
            out.append((off + 4, 4, length))
            off += 8
        if length == 0xFFFFFFFF:
            break  # a sequence: the rest is not walked here
        off += length
    return out


def _nested(depth: int, explicit: bool) -> bytes:
    head = b"\x40\x00\x30\xa7" + (b"SQ\x00\x00" if explicit else b"")
    return (head + b"\xff\xff\xff\xff" + b"\xfe\xff\x00\xe0\xff\xff\xff\xff") * depth + (
        b"\xfe\xff\x0d\xe0\x00\x00\x00\x00" + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00") * depth


class Mutant:
    def __init__(self, name: str, data: bytes, seed: Seed, kind: str) -> None:
        self.name, self.data, self.seed, self.kind = name, data, seed, kind


class Seed:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.data = path.read_bytes()
        self.meta, self.body = data_set_bytes(self.data)
        hdr = pydicom.dcmread(path, stop_before_pixels=True)
        self.sop_class, self.sop_instance = str(hdr.SOPClassUID), str(hdr.SOPInstanceUID)
        self.syntax = str(hdr.file_meta.TransferSyntaxUID)
        self.elements = _elements(self.data, len(self.meta), self.syntax != IMPLICIT)
        self.ts_at = self.meta.find(self.syntax.encode())
        self.class_at = self.body.find(self.sop_class.encode())


def mutate(seed: Seed, rng: random.Random, index: int) -> Mutant:
    data = bytearray(seed.data)
    kind = rng.choice(["flip", "flip", "truncate", "truncate", "length", "length", "syntax", "class",
                       "splice", "nest", "combo"])
    kinds = [rng.choice(["flip", "truncate", "length", "splice"]) for _ in range(2)] if kind == "combo" else [kind]
    for k in kinds:
        if k == "flip":
            for _ in range(rng.randint(1, 16)):
                at = rng.randrange(len(data)) if rng.random() < 0.5 else rng.randrange(min(len(data), 2048))
                data[at] ^= rng.randint(1, 255)
        elif k == "truncate":
            cut = rng.randrange(len(data)) if rng.random() < 0.5 else rng.randrange(min(len(data), 1500))
            del data[cut:]
        elif k == "length":
            for _ in range(rng.randint(1, 3)):
                at, size, length = rng.choice(seed.elements)
                if at + size > len(data):
                    continue
                top = 0xFFFF if size == 2 else 0xFFFFFFFF
                new = rng.choice([0, 1, top, top - 1, length + 1, max(0, length - 1), length * 2 + 3,
                                  rng.randrange(top)])
                data[at:at + size] = new.to_bytes(size, "little")
        elif k == "syntax":  # the file meta lies about the encoding
            ts = seed.syntax.encode()
            bogus = rng.choice(BOGUS_SYNTAXES)
            if rng.random() < 0.5:  # same length: padded or cut, the meta stays well-formed
                bogus = (bogus + b"\x00" * len(ts))[:len(ts) + len(ts) % 2]
            data[seed.ts_at:seed.ts_at + len(ts)] = bogus
        elif k == "class":
            at = len(seed.meta) + seed.class_at
            cls = seed.sop_class.encode()
            data[at:at + len(cls)] = (rng.choice(BOGUS_CLASSES) + b"\x00" * len(cls))[:len(cls)]
        elif k == "splice":
            at = rng.randrange(len(data))
            if rng.random() < 0.5:
                del data[at:at + rng.randint(1, 64)]
            else:
                data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
        elif k == "nest":
            data += _nested(rng.choice([40, 100, 300, 600, 2000]), seed.syntax != IMPLICIT)
        if k in ("syntax", "class", "nest"):  # and one harmless flip in the pixels' half: distinct files
            at = rng.randrange(len(seed.data) // 2, len(seed.data))
            data[at] ^= rng.randint(1, 255)
    return Mutant(f"m{index:05d}-{kind}-{seed.path.stem}.dcm", bytes(data), seed, kind)


def corpus(seeds: list[Seed], n: int = CORPUS_SIZE) -> list[Mutant]:
    rng = random.Random(SEED)
    return [mutate(seeds[i % len(seeds)], rng, i) for i in range(n)]


@pytest.fixture(scope="module")
def mutants(tmp_path_factory: pytest.TempPathFactory) -> list[Mutant]:
    seeds = [Seed(p) for p in seed_files(tmp_path_factory.mktemp("seeds"))]
    made = corpus(seeds)
    assert len({m.data for m in made}) >= 2000  # distinct files
    assert corpus(seeds, 50)[7].data == made[7].data  # seeded: the same corpus every run
    return made


@pytest.fixture
def gateway(tmp_path: Path, redis_server) -> Iterator[tuple[str, Path]]:
    """The gateway process as `make run` starts it (uvicorn), on a real redis-server (no
    worker: the jobs of accepted mutants wait on the queue); (base URL, data dir)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        port = s.getsockname()[1]
    data_dir = tmp_path / "data"
    env = {**os.environ, "SYNTH_DATA_DIR": str(data_dir), "SYNTH_BROKER_URL": redis_server.url,
           "SYNTH_API_TOKEN": FUZZ_TOKEN}
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "service.gateway.main:app", "--host", HOST,
                             "--port", str(port), "--log-level", "warning"], env=env)
    base = f"http://{HOST}:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{base}/healthz", timeout=1)
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, "gateway did not start"
                time.sleep(0.1)
        yield base, data_dir
    finally:
        proc.terminate()
        proc.wait(15)


def test_http_door_answers_every_mutant_with_2xx_or_4xx(mutants, gateway) -> None:
    base, data_dir = gateway
    answers: Counter[int] = Counter()
    failures = []
    t0 = time.monotonic()
    with httpx.Client(base_url=base, timeout=60,  # one keep-alive connection
                      headers={"Authorization": f"Bearer {FUZZ_TOKEN}"}) as client:
        for m in mutants:
            r = client.post("/synthesize", files=[("files", (m.name, m.data, "application/dicom"))])
            answers[r.status_code] += 1
            if r.status_code >= 500:
                failures.append((m.name, r.status_code, r.text[:200]))
        assert client.get("/healthz").status_code == 200
    took = time.monotonic() - t0
    print(f"HTTP: {len(mutants)} mutants in {took:.1f} s: {dict(sorted(answers.items()))}")
    assert not failures, failures[:10]
    assert answers[202] > 0 and sum(v for k, v in answers.items() if 400 <= k < 500) > len(mutants) // 2
    assert not [p for p in (data_dir / "incoming").rglob("*") if p.is_file()]


def test_dicom_door_answers_every_mutant_with_a_known_status(mutants, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data").model_copy(update={"dicom_port": 0, "dicom_host": HOST})
    listener = Listener(settings, lambda c: None)
    listener.start()
    try:
        contexts = [(s, ts) for s in sorted({m.seed.sop_class for m in mutants})
                    for ts in (ExplicitVRLittleEndian, IMPLICIT)] + [(VERIFICATION, IMPLICIT)]
        scu = RawSCU(HOST, listener.port, contexts)
        ctx_of = {cx: 2 * i + 1 for i, cx in enumerate(contexts)}
        assert all(r == 0 for r in scu.results.values())
        answers: Counter[int] = Counter()
        unknown = []
        t0 = time.monotonic()
        for m in mutants:
            syntax = m.seed.syntax
            if m.kind == "syntax":  # the listener's own meta comes from the context: lie there
                syntax = IMPLICIT if syntax != IMPLICIT else ExplicitVRLittleEndian
            body = m.data[len(m.seed.meta):]
            status, comment = scu.store(ctx_of[(m.seed.sop_class, syntax)], m.seed.sop_class,
                                        m.seed.sop_instance, body)
            answers[status] += 1
            if status not in DICOM_STATUSES:
                unknown.append((m.name, hex(status), comment))
        took = time.monotonic() - t0
        print(f"DICOM: {len(mutants)} mutants in {took:.1f} s: "
              f"{ {hex(k): v for k, v in sorted(answers.items())} }")
        assert not unknown, unknown[:10]
        assert answers[0x0000] > 0 and answers[0xC000] > len(mutants) // 4
        assert scu.echo(ctx_of[(VERIFICATION, IMPLICIT)]) == 0
        scu.release()
        r = subprocess.run(["echoscu", "-aec", "SYNTH", HOST, str(listener.port)], env=PEER_ENV,
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
    finally:
        listener.stop()
