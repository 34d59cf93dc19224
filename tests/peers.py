"""Real peers for tests: redis-server, Orthanc (as the PACS) and DCMTK tools, each on
free loopback ports in a temporary directory, always stopped afterwards.

Debian's Orthanc and DCMTK builds stall on small PDUs unless TCP_NODELAY=1 is in their
environment, so every process started here gets it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset


def path_without_virtualenvs(path: str) -> str:
    """PATH minus the bin folders of Python virtualenvs (those beside a pyvenv.cfg):
    pynetdicom installs its own `storescu`, `findscu` and `echoscu` there, with other
    options than DCMTK's, and an activated virtualenv would put them first."""
    return os.pathsep.join(p for p in path.split(os.pathsep) if p and not (Path(p).parent / "pyvenv.cfg").exists())


PEER_ENV = {**os.environ, "TCP_NODELAY": "1", "PATH": path_without_virtualenvs(os.environ.get("PATH", ""))}
LOOPBACK = "127.0.0.1"


class PeerError(RuntimeError):
    """A peer could not be started or answered wrongly."""


def free_port() -> int:
    """A loopback port nobody listens on right now (the caller retries on a race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def require_binary(name: str) -> str:
    sbin = Path("/usr/sbin") / name
    path = shutil.which(name, path=PEER_ENV["PATH"]) or (str(sbin) if sbin.exists() else None)
    if path is None:
        raise PeerError(
            f"'{name}' is not installed; `make test` installs it "
            "(apt-get install redis-server orthanc orthanc-dicomweb dcmtk dicom3tools postgresql)"
        )
    return path


def _stop(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


def _tail(path: Path, n: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def wait_until(predicate, timeout: float, what: str, interval: float = 0.1):
    """Poll `predicate()` until it returns something truthy and return that; AssertionError
    naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=0.5):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------- redis


@dataclass
class RedisPeer:
    port: int
    workdir: Path
    proc: subprocess.Popen
    appendonly: bool = False

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    def ping(self) -> bool:
        try:
            with socket.create_connection((LOOPBACK, self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        _stop(self.proc)

    def kill(self) -> None:
        """SIGKILL, as a crash would: with appendonly, what it had not fsynced yet is lost."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def restart(self) -> None:
        """Start it again, on the same port and data dir (after `stop` or `kill`)."""
        self.proc = start_redis(self.workdir, port=self.port, appendonly=self.appendonly).proc


def start_redis(workdir: Path, *, attempts: int = 3, timeout: float = 15.0, port: int | None = None,
                appendonly: bool = False) -> RedisPeer:
    """redis-server on a free port (or `port`), data dir in `workdir`; no persistence, or
    with `appendonly` the append-only file, fsynced every second (the compose set-up)."""
    binary = require_binary("redis-server")
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "redis.log"
    chosen = port
    for _ in range(attempts):
        port = chosen or free_port()
        proc = subprocess.Popen(
            [binary, "--port", str(port), "--bind", LOOPBACK, "--save", "",
             "--appendonly", "yes" if appendonly else "no", "--appendfsync", "everysec",
             "--dir", str(workdir), "--daemonize", "no", "--logfile", str(log)],
            env=PEER_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )
        peer = RedisPeer(port=port, workdir=workdir, proc=proc, appendonly=appendonly)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            if peer.ping():
                return peer
            time.sleep(0.05)
        peer.stop()
    raise PeerError(f"redis-server did not start: {_tail(log)}")


# --------------------------------------------------------------------------- Orthanc

# The script shipped for real deployments (docker/orthanc), with our AE title put in.
_FORWARD_LUA_FILE = Path(__file__).resolve().parents[1] / "docker" / "orthanc" / "forward-to-synth.lua"


def forward_lua(synth_aet: str) -> str:
    return _FORWARD_LUA_FILE.read_text().replace("'SYNTH'", repr(synth_aet)).replace(
        "/modalities/SYNTH/", f"/modalities/{synth_aet}/")


@dataclass
class OrthancPeer:
    """A running Orthanc. `aet` is its AE title; results stored into it keep their
    calling AE in the instance metadata `RemoteAET`."""

    dicom_port: int
    http_port: int
    aet: str
    workdir: Path
    proc: subprocess.Popen
    log: Path
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def http_url(self) -> str:
        return f"http://{LOOPBACK}:{self.http_port}"

    # ---- REST
    def get(self, path: str, *, raw: bool = False, timeout: float = 30.0) -> Any:
        with urllib.request.urlopen(self.http_url + path, timeout=timeout) as rsp:
            body = rsp.read()
        return body if raw else json.loads(body)

    def post(self, path: str, payload: Any, *, timeout: float = 30.0) -> Any:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        req = urllib.request.Request(self.http_url + path, data=data, method="POST")
        with urllib.request.urlopen(req, timeout=timeout) as rsp:
            body = rsp.read()
        return json.loads(body) if body else None

    def alive(self) -> bool:
        try:
            self.get("/system", timeout=2)
            return True
        except (OSError, urllib.error.URLError, ValueError):
            return False

    # ---- helpers tests use
    def series_in_study(self, study_uid: str) -> list[dict]:
        """Expanded Orthanc series resources of the study (empty when unknown)."""
        return self.post(
            "/tools/find",
            {"Level": "Series", "Query": {"StudyInstanceUID": study_uid}, "Expand": True},
        )

    def instances(self, series_id: str) -> list[dict]:
        return self.get(f"/series/{series_id}/instances")

    def get_file(self, instance_id: str) -> bytes:
        return self.get(f"/instances/{instance_id}/file", raw=True)

    def get_dicom(self, instance_id: str) -> Dataset:
        return dcmread(BytesIO(self.get_file(instance_id)))

    def remote_aet(self, instance_id: str) -> str:
        return self.get(f"/instances/{instance_id}/metadata/RemoteAET", raw=True).decode()

    def instance_count(self) -> int:
        return int(self.get("/statistics")["CountInstances"])

    def wait_for(self, predicate, *, timeout: float = 60.0, interval: float = 0.1) -> Any:
        """Poll `predicate()` until it returns something truthy; raise with the log tail."""
        try:
            return wait_until(predicate, timeout, "a condition on Orthanc", interval)
        except AssertionError:
            raise PeerError(f"condition not met within {timeout} s; Orthanc log: {_tail(self.log)}") from None

    def stop(self, graceful: bool = False) -> None:
        """Killed by default: its storage is throwaway, and a clean stop takes ~3 s."""
        if graceful:
            _stop(self.proc)
        elif self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def start_orthanc(
    workdir: Path,
    *,
    synth_port: int | None = None,
    dicom_port: int | None = None,
    synth_aet: str = "SYNTH",
    synth_host: str = LOOPBACK,
    aet: str = "ORTHANC",
    allow_any_store: bool = True,
    modalities: dict[str, tuple[str, str, int]] | None = None,
    stable_age: int = 1,
    check_called_aet: bool = False,
    dicomweb: bool = False,
    extra_config: dict[str, Any] | None = None,
    attempts: int = 3,
    timeout: float = 30.0,
) -> OrthancPeer:
    """Start Orthanc with its storage in `workdir`. With `synth_port`, it knows a modality
    named `synth_aet` at synth_host:synth_port and forwards every stable series there,
    except series that `synth_aet` itself stored. `allow_any_store=False` makes it refuse
    calling AEs not listed in `modalities` (name -> (AE, host, port));
    `check_called_aet=True` makes it reject associations addressed to another AE title;
    `extra_config` is merged into its configuration (e.g. DICOM TLS)."""
    binary = require_binary("Orthanc")
    workdir.mkdir(parents=True, exist_ok=True)
    known: dict[str, list[Any]] = {k: list(v) for k, v in (modalities or {}).items()}
    lua_scripts: list[str] = []
    if synth_port is not None:
        known[synth_aet] = [synth_aet, synth_host, synth_port]
        lua = workdir / "forward.lua"
        lua.write_text(forward_lua(synth_aet))
        lua_scripts.append(str(lua))
    plugins = []
    if dicomweb:
        plugin = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
        if not plugin.exists():
            raise PeerError("orthanc-dicomweb plugin missing; `make test` installs it")
        plugins.append(str(plugin))
    log = workdir / "orthanc.log"
    for _ in range(attempts):
        http_port, port = free_port(), dicom_port or free_port()
        config = {
            "Name": f"test-pacs-{port}",
            "StorageDirectory": str(workdir / "storage"),
            "IndexDirectory": str(workdir / "storage"),
            "StorageCompression": False,
            "HttpServerEnabled": True,
            "HttpPort": http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "SslEnabled": False,
            "DicomServerEnabled": True,
            "DicomAet": aet,
            "DicomPort": port,
            "DicomCheckCalledAet": check_called_aet,
            "DicomCheckModalityHost": False,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": allow_any_store,
            "DicomModalities": known,
            "DicomScuTimeout": 30,
            "DicomScpTimeout": 30,
            "StableAge": stable_age,
            "LuaScripts": lua_scripts,
            "Plugins": plugins,
            "ConcurrentJobs": 2,
            "HttpTimeout": 30,
            "SaveJobs": False,
            "OverwriteInstances": True,
            "DicomWeb": {"Enable": dicomweb, "Root": "/dicom-web/"},
            **(extra_config or {}),
        }
        cfg = workdir / "orthanc.json"
        cfg.write_text(json.dumps(config, indent=2))
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [binary, "--no-jobs", str(cfg)], cwd=workdir, env=PEER_ENV,
                stdout=out, stderr=subprocess.STDOUT,
            )
        peer = OrthancPeer(
            dicom_port=port, http_port=int(config["HttpPort"]), aet=aet, workdir=workdir,
            proc=proc, log=log, config=config,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            if peer.alive() and _port_open(port):
                return peer
            time.sleep(0.1)
        peer.stop()
    raise PeerError(f"Orthanc did not start; log tail: {_tail(log)}")


# --------------------------------------------------------------------------- DCMTK


def storescu(
    files: Sequence[Path],
    host: str,
    port: int,
    called_ae: str,
    *,
    calling_ae: str = "STORESCU",
    extra_args: Sequence[str] = (),
    timeout: float = 300.0,
) -> subprocess.CompletedProcess:
    """DCMTK storescu, one association for all `files`; raises PeerError on failure."""
    binary = require_binary("storescu")
    cmd = [binary, "-aet", calling_ae, "-aec", called_ae, *extra_args, host, str(port),
           *[str(f) for f in files]]
    result = subprocess.run(cmd, env=PEER_ENV, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise PeerError(f"storescu failed ({result.returncode}): {result.stderr[-2000:]}")
    return result


# --------------------------------------------------------------------------- PostgreSQL


def postgres_bin(name: str) -> str:
    """A PostgreSQL server program (initdb, pg_ctl, postgres) of Debian's `postgresql`
    package, which keeps them out of PATH under /usr/lib/postgresql/<major>/bin."""
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), key=lambda p: int(p.parts[-3]))
    if found:
        return str(found[-1])
    return require_binary(name)


@dataclass
class PostgresPeer:
    """A throwaway PostgreSQL cluster on a free loopback port; trust auth, user `postgres`."""

    port: int
    workdir: Path
    proc: subprocess.Popen

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@{LOOPBACK}:{self.port}/{database}"

    def _connect(self, database: str = "postgres"):
        import psycopg

        return psycopg.connect(f"host={LOOPBACK} port={self.port} user=postgres dbname={database}",
                               autocommit=True, connect_timeout=2)

    def ready(self) -> bool:
        try:
            with self._connect() as conn:
                conn.execute("SELECT 1")
            return True
        except Exception:
            return False

    def create_database(self, name: str) -> str:
        """A new empty database; returns its SQLAlchemy URL."""
        with self._connect() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        """Fast shutdown (SIGINT): open client connections are cut, not waited for."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        _stop(self.proc, timeout=20)
        shutil.rmtree(self.workdir, ignore_errors=True)


_session_postgres: PostgresPeer | None = None


def session_postgres() -> PostgresPeer:
    """One throwaway PostgreSQL cluster for the whole test session, started on first use and
    stopped when the session's process exits; each user takes its own database of it."""
    global _session_postgres
    if _session_postgres is None:
        import atexit

        _session_postgres = start_postgres()
        atexit.register(_session_postgres.stop)
    return _session_postgres


def default_job_db_url() -> str | None:
    """The job store of a test that does not choose one: None (SQLite in the data directory)
    or, with SYNTH_TEST_JOB_DB=postgresql, a fresh database of the session's PostgreSQL."""
    kind = os.environ.get("SYNTH_TEST_JOB_DB", "sqlite")
    if kind == "sqlite":
        return None
    if kind != "postgresql":
        raise ValueError(f"SYNTH_TEST_JOB_DB={kind!r}: expected sqlite or postgresql")
    import uuid

    return session_postgres().create_database(f"t{uuid.uuid4().hex[:12]}")


def start_postgres(*, attempts: int = 3, timeout: float = 30.0) -> PostgresPeer:
    """initdb + postgres in a fresh temporary directory. PostgreSQL refuses to run as
    root, so under root the cluster belongs to the `postgres` system user (its programs
    started with that uid); the directory is outside pytest's tmp_path, which other users
    cannot enter."""
    import pwd
    import tempfile

    initdb, server = postgres_bin("initdb"), postgres_bin("postgres")
    workdir = Path(tempfile.mkdtemp(prefix="synth-pg-"))
    as_user: dict[str, Any] = {}
    if os.geteuid() == 0:
        owner = pwd.getpwnam("postgres")
        os.chown(workdir, owner.pw_uid, owner.pw_gid)
        as_user = {"user": owner.pw_uid, "group": owner.pw_gid, "extra_groups": []}
    data, log = workdir / "data", workdir / "postgres.log"
    subprocess.run([initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                    "--no-sync", "--locale=C.UTF-8"], env=PEER_ENV, check=True, capture_output=True, timeout=120,
                   cwd=workdir, **as_user)
    for _ in range(attempts):
        port = free_port()
        proc = subprocess.Popen(
            [server, "-D", str(data), "-p", str(port), "-h", LOOPBACK, "-k", str(workdir),
             "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
             "-c", "max_connections=200"],
            env=PEER_ENV, stdout=open(log, "ab"), stderr=subprocess.STDOUT, cwd=workdir, **as_user,
        )
        peer = PostgresPeer(port=port, workdir=workdir, proc=proc)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            if peer.ready():
                return peer
            time.sleep(0.1)
        _stop(proc)
    text = _tail(log)
    shutil.rmtree(workdir, ignore_errors=True)
    raise PeerError(f"postgres did not start: {text}")


@contextmanager
def mounted_tmpfs(mount_point: Path, size: str) -> Iterator[Path]:
    """A real tmpfs of `size` (e.g. "512k") at `mount_point`, for full-disk tests; mounting
    needs root, as on the CI machine: elsewhere the test is skipped, saying why."""
    mount_point.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount_point)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)
