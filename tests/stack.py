"""The whole service as `make run` starts it (service.runner), on free loopback ports
in a temporary data directory, for end-to-end tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.peers import LOOPBACK, PEER_ENV, PeerError, _port_open, _tail, default_job_db_url, free_port

REPO = Path(__file__).resolve().parents[1]


@dataclass
class ServiceStack:
    http_port: int
    dicom_port: int
    data_dir: Path
    proc: subprocess.Popen
    log: Path
    ae_title: str = "SYNTH"
    database_url: str | None = None  # SYNTH_DATABASE_URL; None: SQLite in the data directory
    token: str | None = None
    """The bearer token every request sends: SYNTH_API_TOKEN, else the admin token the
    runner made in <data_dir>/api-token (None with SYNTH_AUTH=off or another token source)."""

    @property
    def job_db_url(self) -> str:
        """The service's job store, for a test to open (`JobStore(stack.job_db_url)`)."""
        return self.database_url or f"sqlite:///{self.data_dir / 'jobs.sqlite3'}"

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.http_port}"

    def client(self, token: str | None = "") -> httpx.Client:
        """An HTTP client that sends the stack's token (or `token`; None: no token)."""
        token = self.token if token == "" else token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, timeout=60, headers=headers)

    def post(self, files, task: str = "auto", **form: str) -> httpx.Response:
        """POST /synthesize with the files as multipart, as a client would (`form`: more
        form fields, e.g. source_contrast)."""
        with self.client() as c:
            return c.post("/synthesize", data={"task": task, **form},
                          files=[("files", (f.name, f.read_bytes(), "application/dicom")) for f in files])

    def job(self, job_id: str) -> dict:
        with self.client() as c:
            r = c.get(f"/jobs/{job_id}")
            r.raise_for_status()
            return r.json()

    def wait_job(self, job_id: str, statuses=("done", "failed", "skipped"), timeout: float = 300) -> dict:
        deadline = time.monotonic() + timeout
        job: dict = {}
        while time.monotonic() < deadline:
            job = self.job(job_id)
            if job["status"] in statuses:
                return job
            time.sleep(0.2)
        raise PeerError(f"job {job_id} still {job.get('status')} after {timeout} s; log: {_tail(self.log, 4000)}")

    def jobs(self) -> list[dict]:
        with self.client() as c:
            return c.get("/jobs").json()

    def crash(self) -> None:
        """SIGKILL the runner and every process under it, as a power cut would."""
        import psutil

        try:
            parent = psutil.Process(self.proc.pid)
            procs = [parent, *parent.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        for p in procs:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(procs, timeout=10)
        self.proc.wait(5)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


def start_stack(
    workdir: Path,
    *,
    broker_url: str | None,
    pacs: str | None = None,
    database_url: str | None = "from SYNTH_TEST_JOB_DB",
    env: dict[str, str] | None = None,
    timeout: float = 90,
) -> ServiceStack:
    """Start gateway, listener, workers (and an embedded broker when broker_url is None);
    the job store is `database_url` (None: SQLite in the data directory); by default that
    SQLite, or a fresh PostgreSQL database with SYNTH_TEST_JOB_DB=postgresql."""
    workdir.mkdir(parents=True, exist_ok=True)
    http_port, dicom_port = free_port(), free_port()
    # The test decides every setting, except where the models are (to test other weights).
    full_env = {k: v for k, v in PEER_ENV.items() if not k.startswith("SYNTH_") or k == "SYNTH_MODELS_DIR"}
    full_env.update(
        SYNTH_DATA_DIR=str(workdir / "var"),
        SYNTH_HTTP_PORT=str(http_port),
        SYNTH_DICOM_PORT=str(dicom_port),
        SYNTH_HTTP_HOST=LOOPBACK,
        SYNTH_DICOM_HOST=LOOPBACK,
        SYNTH_EXPORT_RETRIES="2",
        SYNTH_EXPORT_BACKOFF_SECONDS="0.2",
        OMP_NUM_THREADS="2",
    )
    if broker_url:
        full_env["SYNTH_BROKER_URL"] = broker_url
    if pacs:
        full_env["SYNTH_PACS"] = pacs
    if database_url == "from SYNTH_TEST_JOB_DB":
        database_url = default_job_db_url()
    if database_url:
        full_env["SYNTH_DATABASE_URL"] = database_url
    full_env.update(env or {})
    http_port, dicom_port = int(full_env["SYNTH_HTTP_PORT"]), int(full_env["SYNTH_DICOM_PORT"])
    log = workdir / "service.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "service.runner"],
        cwd=REPO, env=full_env, stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    stack = ServiceStack(http_port, dicom_port, Path(full_env["SYNTH_DATA_DIR"]), proc, log,
                         database_url=full_env.get("SYNTH_DATABASE_URL"))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise PeerError(f"service exited with {proc.returncode}: {_tail(log, 4000)}")
        if _healthy(stack) and _port_open(dicom_port):
            stack.token = _token(full_env, stack.data_dir)
            return stack
        time.sleep(0.2)
    stack.stop()
    raise PeerError(f"service not healthy within {timeout} s: {_tail(log, 4000)}")


def _token(env: dict[str, str], data_dir: Path) -> str | None:
    if env.get("SYNTH_API_TOKEN"):
        return env["SYNTH_API_TOKEN"]
    generated = data_dir / "api-token"  # service.tokens.GENERATED_TOKEN_FILE
    return generated.read_text().strip() if generated.is_file() else None


def _healthy(stack: ServiceStack) -> bool:
    try:
        return httpx.get(stack.url + "/healthz", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def start_node(
    workdir: Path,
    node: str,
    *,
    data_dir: Path,
    broker_url: str,
    database_url: str,
    pacs: str | None = None,
    env: dict[str, str] | None = None,
) -> ServiceStack:
    """One node of several (issue 14): the whole service as `make run` starts it, its
    workers named `<kind>@<node>` (SYNTH_NODE_NAME), sharing with the other nodes only the
    broker, the PostgreSQL job store and the data directory (series store, outputs); its
    log, ports and processes are its own."""
    return start_stack(workdir, broker_url=broker_url, pacs=pacs, database_url=database_url,
                       env={"SYNTH_DATA_DIR": str(data_dir), "SYNTH_NODE_NAME": node, **(env or {})})
