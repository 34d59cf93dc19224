"""GET /metrics: Prometheus text that prometheus_client's parser reads, behind a `read` token
(or open with SYNTH_METRICS_PUBLIC), and counters that move as the real stack receives
instances (DCMTK storescu into the listener) and jobs (POST /synthesize); the audit trail
of the same run lists the association and the API calls, and holds no patient name or ID."""

from __future__ import annotations

import time
from pathlib import Path

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from pydicom import dcmread
from pydicom.uid import generate_uid

from dicom_synth.domain import Job, JobStatus
from dicom_synth.jobstore import JobStore
from dicom_synth.settings import Settings, get_settings
from models.dce.phantom_dicom import write_phantom_series
from service.gateway.main import create_app
from service.tokens import add_token
from tests.peers import storescu

PATIENT_NAME, PATIENT_ID = "Audit^Janet^Q", "PID-AUDIT-778899"


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """Every sample of the exposition, by name and sorted labels."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(scraped: dict, name: str, **labels: str) -> float:
    return scraped.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_needs_a_read_token_unless_public_and_shows_scrape_time_gauges(tmp_path: Path):
    tokens = tmp_path / "tokens"
    read = add_token(tokens, "prometheus", ["read"])
    submit = add_token(tokens, "modality", ["submit"])
    settings = Settings(data_dir=tmp_path / "data", broker_url="redis://127.0.0.1:1/0", api_tokens_file=tokens)
    JobStore(settings.jobs_db_url).create(Job(job_id="j1", status=JobStatus.RECEIVED, source_series_uid="1.2",
                                              study_instance_uid="1.2.3", origin="http"))
    app = create_app()
    app.dependency_overrides[get_settings] = lambda: settings
    with TestClient(app) as client:
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"Authorization": f"Bearer {submit}"}).status_code == 403
        r = client.get("/metrics", headers={"Authorization": f"Bearer {read}"})
        settings.metrics_public = True
        assert client.get("/metrics").status_code == 200
        assert client.get("/jobs").status_code == 401  # only /metrics is opened
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    scraped = samples(r.text)
    assert value(scraped, "synth_jobs", state="received", task="") == 1
    assert value(scraped, "synth_disk_free_bytes") > 0
    assert value(scraped, "synth_scrape_ok", source="database") == 1
    assert value(scraped, "synth_scrape_ok", source="broker") == 0  # nothing listens there
    assert ("synth_jobs_created_total", (("origin", "http"),)) in scraped


def _series(out: Path, seed: int) -> list[Path]:
    files = write_phantom_series(out, seed=seed, n_slices=4, size=128)
    series_uid = generate_uid()
    for f in files:
        ds = dcmread(f)
        ds.PatientName, ds.PatientID, ds.SeriesInstanceUID = PATIENT_NAME, PATIENT_ID, series_uid
        ds.save_as(f)
    return files


def test_counters_move_with_instances_and_jobs_and_the_audit_lists_them(tmp_path, stack_no_pacs):
    stack = stack_no_pacs
    start = time.time()
    with stack.client() as c:
        before = samples(c.get("/metrics").text)
    storescu(_series(tmp_path / "a", 911), "127.0.0.1", stack.dicom_port, stack.ae_title, calling_ae="MODALITY7")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not stack.jobs():
        time.sleep(0.2)
    (listened,) = stack.jobs()
    stack.wait_job(listened["job_id"])
    posted = stack.post(_series(tmp_path / "b", 912))
    assert posted.status_code == 202, posted.text
    job_id = posted.json()["job_id"]
    final = stack.wait_job(job_id)
    with stack.client() as c:
        scrape = c.get("/metrics")
        assert c.get("/jobs", headers={"Authorization": "Bearer not-a-token"}).status_code == 401
        audit = c.get("/audit", params={"since": start - 1, "limit": 1000})
    assert scrape.status_code == 200
    after = samples(scrape.text)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("synth_instances_total", status="0x0000") == 4
    assert moved("synth_associations_total", outcome="accepted") == 1
    assert moved("synth_jobs_created_total", origin="dicom") == 1
    assert moved("synth_jobs_created_total", origin="http") == 1
    assert moved("synth_job_step_seconds_count", step="received") == 2  # both jobs left `received`
    assert value(after, "synth_jobs", state=final["status"], task=final["task"] or "") >= 1
    assert all(value(after, "synth_queue_depth", queue=q) == 0 for q in ("default", "gpu", "export"))
    assert value(after, "synth_scrape_ok", source="broker") == 1

    assert audit.status_code == 200, audit.text
    events = audit.json()
    (assoc,) = [e for e in events if e["kind"] == "association"]
    assert (assoc["who"], assoc["address"], assoc["outcome"]) == ("MODALITY7", "127.0.0.1", "released")
    assert assoc["detail"]["stored"] == 4 and assoc["detail"]["refused"] == 0 and assoc["detail"]["seconds"] >= 0
    calls = {(e["who"], e["action"], e["subject"], e["outcome"]) for e in events if e["kind"] == "api"}
    admin = "admin (SYNTH_API_TOKEN)"  # the token the runner made and handed its children
    assert (admin, "POST /synthesize", job_id, "202") in calls
    assert (admin, "GET /jobs/{job_id}", job_id, "200") in calls
    assert ("-", "GET /jobs", None, "401") in calls
    assert all(e["address"] == "127.0.0.1" and start - 1 <= e["at"] <= time.time() for e in events)
    assert PATIENT_NAME.split("^")[0] not in audit.text and PATIENT_ID not in audit.text
