"""Security end to end (issue 17), on the service as `make run` starts it with a real
redis-server, Orthanc as the PACS and DCMTK storescu as the modality: tokens and scopes
over real HTTP, the AE allow-list by address, no patient value in any log line after a
series went both ways (DICOM and HTTP) through the model to the PACS, and file modes."""

from __future__ import annotations

import re
import stat
import time

import httpx
import pytest
import sqlalchemy as sa
from pydicom import dcmread
from pydicom.uid import generate_uid

from dicom_synth.jobstore import JobStore
from models.dce.phantom_dicom import write_phantom_series
from service.tokens import add_token
from tests.peers import PeerError, storescu
from tests.stack import start_stack

pytestmark = pytest.mark.slow

ADMIN = "e2e-security-admin-token"
# Values no header of the service's own could contain by chance.
PATIENT = {"PatientName": "Quexbrill^Ottilie^Marzena", "PatientID": "PID83JZ61Q",
           "AccessionNumber": "ACC55Q0917", "PatientBirthDate": "19310417"}
LEAK_PATTERNS = [
    *PATIENT.values(), "Quexbrill", "Ottilie", "Marzena", "83JZ61", "55Q0917",
    "1931-04-17", "17.04.1931", "1931/04/17",
]


def _series(folder, seed: int) -> list:
    files = write_phantom_series(folder, seed=seed, n_slices=4, size=384)  # the model's domain
    series_uid = generate_uid()
    for f in files:
        ds = dcmread(f)
        for key, value in PATIENT.items():
            setattr(ds, key, value)
        ds.SeriesInstanceUID = series_uid
        ds.save_as(f)
    return files


def test_tokens_allow_list_no_phi_in_logs_and_private_files(tmp_path, redis_server, orthanc_pacs):
    tokens = tmp_path / "api-tokens"
    read_token = add_token(tokens, "viewer", ["read"])
    submit_token = add_token(tokens, "ris", ["submit"])
    stack = start_stack(
        tmp_path / "svc", broker_url=redis_server.url,
        pacs=f"{orthanc_pacs.aet}@127.0.0.1:{orthanc_pacs.dicom_port}",
        env={"SYNTH_API_TOKEN": ADMIN, "SYNTH_API_TOKENS_FILE": str(tokens),
             "SYNTH_ALLOWED_CALLING_AETS": "MODALITY@127.0.0.0/30,REMOTE@127.0.0.2"},
    )
    try:
        # --- tokens over real HTTP
        with stack.client(token=None) as anon:
            assert anon.get("/healthz").status_code == 200
            for method, url in (("GET", "/jobs"), ("GET", "/jobs/x"), ("GET", "/jobs/x/result"),
                                ("POST", "/jobs/x/resend"), ("POST", "/synthesize"), ("GET", "/docs")):
                assert anon.request(method, url).status_code == 401, url
        with stack.client(token=read_token) as reader:
            assert reader.post("/synthesize").status_code == 403
            assert reader.post("/jobs/x/resend").status_code == 403
            assert reader.get("/jobs").status_code == 200
        with stack.client(token=submit_token) as submitter:
            assert submitter.get("/jobs").status_code == 403

        # --- DICOM: an allowed title from a wrong address is refused, the right one stores
        dicom_files = _series(tmp_path / "dicom", seed=931)
        with pytest.raises(PeerError):
            storescu(dicom_files, "127.0.0.1", stack.dicom_port, stack.ae_title, calling_ae="REMOTE")
        storescu(dicom_files, "127.0.0.1", stack.dicom_port, stack.ae_title, calling_ae="MODALITY")

        # --- HTTP with the submit token
        http_files = _series(tmp_path / "http", seed=932)
        with stack.client(token=submit_token) as submitter:
            r = submitter.post("/synthesize", files=[("files", (f.name, f.read_bytes(), "application/dicom"))
                                                     for f in http_files])
        assert r.status_code == 202, r.text

        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(stack.jobs()) < 2:
            time.sleep(0.2)
        jobs = [stack.wait_job(j["job_id"]) for j in stack.jobs()]
        assert sorted(j["status"] for j in jobs) == ["done", "done"], jobs
        with stack.client(token=read_token) as reader:
            for j in jobs:
                assert reader.get(f"/jobs/{j['job_id']}/result").status_code == 200
        assert orthanc_pacs.wait_for(lambda: orthanc_pacs.instance_count() >= 8, timeout=60)
        with stack.client() as admin:  # the admin token may resend
            assert admin.post(f"/jobs/{jobs[0]['job_id']}/resend").status_code == 202
        stack.wait_job(jobs[0]["job_id"], statuses=("done",))
        time.sleep(1.0)  # the last log lines of the export worker
    finally:
        stack.stop()

    # --- no patient value in any log line (the whole service log: every process)
    lines = stack.log.read_text(errors="replace").splitlines()
    assert len(lines) > 20 and any("rejected" in ln and "REMOTE" in ln for ln in lines)
    leaks = [(p, ln) for ln in lines for p in LEAK_PATTERNS if p.lower() in ln.lower()]
    assert not leaks, leaks[:5]
    # nor in the job database: no row of any table (SQLite or PostgreSQL), nor the SQLite file's bytes
    engine = JobStore(stack.job_db_url).engine
    with engine.connect() as conn:
        rows = " ".join(str(row) for table in sa.inspect(engine).get_table_names()
                        for row in conn.execute(sa.text(f'SELECT * FROM "{table}"')))
    assert len(rows) > 100  # the jobs and the audit trail are there
    assert not [p for p in LEAK_PATTERNS if p.lower() in rows.lower()]
    db = stack.data_dir / "jobs.sqlite3"
    if db.exists():
        raw = db.read_bytes()
        assert not [p for p in LEAK_PATTERNS if p.encode() in raw]

    # --- every file the service made is its user's alone: files 0600, directories 0700
    loose = []
    for path in [stack.data_dir, *stack.data_dir.rglob("*")]:
        mode = path.lstat().st_mode
        if stat.S_ISDIR(mode) or stat.S_ISREG(mode):
            if stat.S_IMODE(mode) & 0o077:
                loose.append(f"{oct(stat.S_IMODE(mode))} {path.relative_to(stack.data_dir)}")
    assert not loose, loose[:10]
    # the values did travel: the kept source and the synthetic outputs carry them
    stored = list(stack.data_dir.rglob("*.dcm"))
    assert len(stored) >= 16 and all(b"Quexbrill" in f.read_bytes() for f in stored)


def test_make_run_prints_the_token_it_made(tmp_path, redis_server):
    """No token configured: the runner makes one in <data_dir>/api-token (0600), prints it,
    and the gateway takes it."""
    stack = start_stack(tmp_path / "svc", broker_url=redis_server.url)
    try:
        path = stack.data_dir / "api-token"
        assert stack.token and path.read_text().strip() == stack.token
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert re.search(rf"admin API token .*{re.escape(stack.token)}", stack.log.read_text())
        with stack.client() as c:
            assert c.get("/jobs").status_code == 200
        assert httpx.get(stack.url + "/jobs", timeout=10).status_code == 401
    finally:
        stack.stop()
