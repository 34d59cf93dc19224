"""The audit trail's store (dicom_synth.audit) on both job database backends, and GET /audit
and the calls it records on the real app in-process."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import inspect

from dicom_synth.audit import AuditTrail
from dicom_synth.database import current_revision, head_revision
from dicom_synth.settings import Settings, get_settings
from service.gateway.main import create_app
from service.tokens import add_token

both_backends = pytest.mark.parametrize("job_db_url", ["sqlite", "postgresql"], indirect=True)


@both_backends
def test_events_are_kept_and_filtered_newest_first(job_store_url):
    trail = AuditTrail(job_store_url)
    assert current_revision(trail.engine) == head_revision()
    assert "audit_events" in inspect(trail.engine).get_table_names()
    t0 = time.time()
    trail.record("association", who="CT1", address="10.0.0.7", action="association", outcome="released",
                 detail={"stored": 12, "refused": 1, "seconds": 0.25}, at=t0 - 100)
    trail.record("api", who="reader", address="10.0.0.9", action="GET /jobs/{job_id}", subject="job-1",
                 outcome="200", at=t0 - 50)
    trail.record("api", who="admin", address="10.0.0.9", action="POST /jobs/{job_id}/resend", subject="job-1",
                 outcome="202", at=t0)
    again = AuditTrail(job_store_url)  # another handle (process) reads the same trail
    events = again.events()
    assert [e["action"] for e in events] == ["POST /jobs/{job_id}/resend", "GET /jobs/{job_id}", "association"]
    assoc = events[-1]
    assert (assoc["kind"], assoc["who"], assoc["address"], assoc["outcome"]) == (
        "association", "CT1", "10.0.0.7", "released")
    assert assoc["detail"] == {"stored": 12, "refused": 1, "seconds": 0.25} and assoc["at"] == pytest.approx(t0 - 100)
    assert [e["who"] for e in again.events(kind="api")] == ["admin", "reader"]
    assert [e["who"] for e in again.events(since=t0 - 60)] == ["admin", "reader"]
    assert [e["outcome"] for e in again.events(who="reader")] == ["200"]
    assert len(again.events(limit=1)) == 1
    with pytest.raises(ValueError, match="unknown audit kind"):
        trail.record("pixels", who="x", action="y", outcome="z")


def test_an_unwritable_trail_is_logged_not_raised(tmp_path: Path, caplog):
    trail = AuditTrail(tmp_path / "jobs.sqlite3")
    trail.engine.dispose()
    with trail.engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE audit_events")
    assert trail.record_quietly("api", who="x", action="GET /jobs", outcome="200") is False
    assert "audit event not recorded" in caplog.text


def test_get_audit_needs_admin_and_lists_the_calls_with_who_what_where(tmp_path: Path):
    tokens = tmp_path / "tokens"
    read = add_token(tokens, "ward-viewer", ["read"])
    admin = add_token(tokens, "night-admin", ["admin"])
    settings = Settings(data_dir=tmp_path / "data", broker_url="redis://127.0.0.1:1/0", api_tokens_file=tokens)
    app = create_app()
    app.dependency_overrides[get_settings] = lambda: settings
    start = time.time()
    with TestClient(app) as client:
        assert client.get("/jobs/nojob", headers={"Authorization": f"Bearer {read}"}).status_code == 404
        assert client.get("/jobs?search=Doe^Jane", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.get("/audit", headers={"Authorization": f"Bearer {read}"}).status_code == 403
        r = client.get("/audit", params={"kind": "api"}, headers={"Authorization": f"Bearer {admin}"})
        assert r.status_code == 200, r.text
        assert client.get("/audit", params={"kind": "pixels"},
                          headers={"Authorization": f"Bearer {admin}"}).status_code == 422
        since = client.get("/audit", params={"since": time.time() + 60},
                           headers={"Authorization": f"Bearer {admin}"}).json()
    events = r.json()
    assert [(e["who"], e["action"], e["subject"], e["outcome"]) for e in reversed(events)] == [
        ("ward-viewer", "GET /jobs/{job_id}", "nojob", "404"),
        ("-", "GET /jobs", None, "401"),  # refused calls are audited; the query string is not kept
        ("ward-viewer", "GET /audit", None, "403"),
    ]
    assert all(e["address"] == "testclient" and start <= e["at"] <= time.time() for e in events)
    assert "Doe" not in r.text and since == []
