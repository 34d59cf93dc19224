"""The dashboard, server side: its job list's filters, search and pages on a real job
database (SQLite and PostgreSQL) with the query plans on indexes; the login form, the
session cookie and the CSRF tokens of its forms; and, on the real stack, the job page's
timeline, evidence and previews (PNGs of the right slices), retry and downloads."""

from __future__ import annotations

import io
import re
from datetime import datetime
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydicom import dcmread
from pydicom.uid import generate_uid
from sqlalchemy import text

from dicom_synth.domain import JobStatus
from dicom_synth.jobsearch import JobQuery, page_query, search_digest, search_key
from dicom_synth.jobstate import advance, new_job
from dicom_synth.jobstore import JobStore
from dicom_synth.series import load_series, slice_position
from dicom_synth.settings import Settings, get_settings
from models.dce.phantom_dicom import write_phantom_series
from service.dashboard.previews import row_indices
from service.gateway.main import create_app
from service.tokens import add_token

S = JobStatus
ADMIN = "dashboard-admin-token-for-the-test"
HTML = {"Accept": "text/html"}
both_job_dbs = pytest.mark.parametrize("job_db_url", ["sqlite", "postgresql"], indirect=True)
DAY = 86400.0


def _make(store: JobStore, i: int, status: S, *, task: str, ae: str | None, created_at: float,
          key: bytes = b"") -> None:
    store.create(new_job(job_id=f"job{i:04d}", source_series_uid=f"1.2.{i}", study_instance_uid="1.2",
                         origin=f"dicom:{ae}" if ae else "http", created_at=created_at,
                         accession_digest=search_digest(key, f"ACC{i:04d}"),
                         patient_digest=search_digest(key, f"PID{i % 7}")))
    if status is S.RECEIVED:
        return
    advance(store, f"job{i:04d}", S.CLASSIFIED, series_class="breast_t1_nc")
    if status is S.SKIPPED:
        advance(store, f"job{i:04d}", S.SKIPPED, error="no route")
        return
    advance(store, f"job{i:04d}", S.QUEUED, task=task)
    if status is S.FAILED:
        advance(store, f"job{i:04d}", S.FAILED, error="boom")
        return
    advance(store, f"job{i:04d}", S.RUNNING)
    advance(store, f"job{i:04d}", S.DONE, progress=1.0)


def _app(settings: Settings) -> TestClient:
    app = create_app()
    app.dependency_overrides[get_settings] = lambda: settings
    return TestClient(app)


def login(client: httpx.Client | TestClient, token: str, target: str = "/") -> httpx.Response:
    """The login form as a browser fills it: its nonce (and cookie), the token, where next."""
    form = client.get("/dashboard/login", params={"next": target})
    nonce = re.search(r'name="nonce" value="([^"]+)"', form.text).group(1)
    return client.post("/dashboard/login", data={"token": token, "nonce": nonce, "next": target},
                       follow_redirects=False)


def rows(page: str) -> list[str]:
    return re.findall(r'<tr data-job="([^"]+)"', page)


def csrf_of(page: str) -> str:
    return re.search(r'name="csrf" value="([0-9a-f]+)"', page).group(1)


@both_job_dbs
def test_job_list_filters_search_and_pages_in_the_database(tmp_path: Path, job_db_url):
    settings = Settings(data_dir=tmp_path / "data", broker_url="redis://127.0.0.1:1/0", api_token=ADMIN,
                        database_url=job_db_url)
    store = JobStore(settings.jobs_db_url)
    day0 = datetime(2024, 3, 10, 12).timestamp()
    statuses = (S.RECEIVED, S.SKIPPED, S.FAILED, S.DONE)
    for i in range(120):  # four states, three tasks, two AEs and HTTP, over three days
        _make(store, i, statuses[i % 4], task=("dce_phase1", "pseudo_mri", "brain_contrasts")[i % 3],
              ae=("MODA", "MODB", None)[i % 3] if i % 5 else "MODC", created_at=day0 + (i // 40) * DAY + i,
              key=search_key(settings))
    with _app(settings) as client:
        assert login(client, ADMIN).status_code == 303
        first = client.get("/")
        assert first.status_code == 200
        assert rows(first.text) == [f"job{i:04d}" for i in range(119, 69, -1)]  # newest first, 50 a page
        assert "Jobs 1–50 of 120" in first.text and 'rel="next"' in first.text and 'rel="prev"' not in first.text
        third = client.get("/", params={"page": 3})
        assert rows(third.text) == [f"job{i:04d}" for i in range(19, -1, -1)] and 'rel="next"' not in third.text

        def listed(**params) -> list[str]:
            found = []
            for page in range(1, 4):
                r = client.get("/dashboard/live/jobs", params={**params, "page": page})  # the polled fragment
                assert r.status_code == 200, r.text
                found += rows(r.text)
            return found

        assert sorted(listed(state="failed")) == [f"job{i:04d}" for i in range(120) if i % 4 == 2]
        assert sorted(listed(task="pseudo_mri")) == [f"job{i:04d}" for i in range(120)
                                                     if i % 3 == 1 and i % 4 in (2, 3)]
        assert sorted(listed(ae="MODC")) == [f"job{i:04d}" for i in range(120) if i % 5 == 0]
        assert sorted(listed(state="done", ae="MODB")) == [f"job{i:04d}" for i in range(120)
                                                           if i % 4 == 3 and i % 3 == 1 and i % 5]
        assert sorted(listed(date_from="2024-03-11", date_to="2024-03-11")) == [f"job{i:04d}" for i in range(40, 80)]
        assert sorted(listed(date_from="2024-03-12")) == [f"job{i:04d}" for i in range(80, 120)]
        assert listed(q="ACC0042") == ["job0042"]
        assert sorted(listed(q="PID3")) == [f"job{i:04d}" for i in range(120) if i % 7 == 3]
        assert listed(q="job0007") == ["job0007"]
        assert listed(q="nobody") == [] and "No job matches." in client.get("/", params={"q": "nobody"}).text
        assert client.get("/", params={"state": "lost"}).status_code == 422
        assert client.get("/", params={"date_from": "10/03/2024"}).status_code == 422
        # The JSON contract is unchanged: no patient ID or accession number in it.
        job = client.get("/jobs/job0042", headers={"Authorization": f"Bearer {ADMIN}"}).json()
        assert "patient_id" not in job and "accession_number" not in job and job["status"] == "failed"
    # The database keeps keyed digests, not the values; with another key nothing matches.
    with store.engine.connect() as conn:
        raw = " ".join(str(v) for row in conn.execute(text("SELECT * FROM jobs")) for v in row)
    assert "ACC0042" not in raw and "PID3" not in raw
    other = Settings(data_dir=tmp_path / "elsewhere", broker_url="redis://127.0.0.1:1/0", api_token=ADMIN,
                     database_url=job_db_url)
    assert search_key(other) != search_key(settings) and len(search_key(settings)) == 32
    assert oct((settings.data_dir / "search-key").stat().st_mode & 0o777) == "0o600"


def test_each_filter_is_an_index_search(tmp_path: Path):
    """The page's query reads an index for every filter (SQLite's plan): no scan of the bodies."""
    store = JobStore(tmp_path / "jobs.sqlite3")
    queries = [JobQuery(), JobQuery(status="failed"), JobQuery(task="pseudo_mri"), JobQuery(calling_ae="MODA"),
               JobQuery(since=1.0, until=2.0), JobQuery(text="ACC1"), JobQuery(status="done", offset=500)]
    with store.engine.connect() as conn:
        for q in queries:
            compiled = page_query(q).compile(store.engine, compile_kwargs={"literal_binds": True})
            plan = " | ".join(str(r[-1]) for r in conn.execute(text(f"EXPLAIN QUERY PLAN {compiled}")))
            scans = [step for step in plan.split(" | ") if step.startswith("SCAN") and "INDEX" not in step]
            assert "INDEX" in plan and not scans, (q, plan)


def test_login_cookie_scopes_and_csrf(tmp_path: Path):
    tokens = tmp_path / "tokens"
    read, submit = add_token(tokens, "viewer", ["read"]), add_token(tokens, "modality", ["submit"])
    settings = Settings(data_dir=tmp_path / "data", broker_url="redis://127.0.0.1:1/0", api_token=ADMIN,
                        api_tokens_file=tokens)
    JobStore(settings.jobs_db_url).create(new_job(job_id="j1", source_series_uid="1.2", study_instance_uid="1.2.3",
                                                  origin="http"))
    with _app(settings) as client:
        # A browser without a session is sent to the form; a script gets 401, as on the API.
        r = client.get("/dashboard/jobs/j1", headers=HTML, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/dashboard/login?next=%2Fdashboard%2Fjobs%2Fj1"
        for path in ("/", "/dashboard/live/jobs", "/dashboard/previews/j1/input/0.png", "/dashboard/models",
                     "/docs"):
            assert client.get(path).status_code == 401, path
        assert client.get("/static/dashboard/dashboard.css").status_code == 200  # assets hold no data
        # The form: a token it does not know, one without `read`, a post without its nonce.
        assert login(client, "wrong").status_code == 401
        assert login(client, submit).status_code == 403
        assert client.post("/dashboard/login", data={"token": ADMIN, "nonce": "x"}).status_code == 403
        assert client.get("/", follow_redirects=False).status_code == 401
        # A read token: the session cookie is HttpOnly and SameSite=Strict; `next` stays on this site.
        r = login(client, read, target="//evil.example/")
        assert r.status_code == 303 and r.headers["location"] == "/"
        cookie = r.headers["set-cookie"].lower()
        assert "synth_session=" in cookie and "httponly" in cookie and "samesite=strict" in cookie
        assert client.get("/").status_code == 200 and client.get("/dashboard/jobs/j1").status_code == 200
        assert client.get("/docs").status_code == 200 and client.get("/openapi.json").status_code == 200
        assert client.get("/jobs").status_code == 401  # the JSON API takes no cookie
        page = client.get("/dashboard/jobs/j1").text
        assert "Retry as a new job" not in page  # no admin action is offered to a read token
        assert client.post("/dashboard/jobs/j1/retry", data={"csrf": csrf_of(page)}).status_code == 403
        # An admin session: an action without the form's CSRF token, or with another's, is refused.
        assert login(client, ADMIN).status_code == 303
        page = client.get("/dashboard/jobs/j1").text
        assert client.post("/dashboard/jobs/j1/retry").status_code == 403
        assert client.post("/dashboard/jobs/j1/retry", data={"csrf": "0" * 64}).status_code == 403
        r = client.post("/dashboard/jobs/j1/retry", data={"csrf": csrf_of(page)})
        assert r.status_code == 409 and "retry a failed or skipped job" in r.text  # past CSRF; j1 is received
        # Logging out ends the session.
        r = client.post("/dashboard/logout", data={"csrf": csrf_of(page)}, follow_redirects=False)
        assert r.status_code == 303 and 'synth_session=""' in r.headers["set-cookie"]
        assert client.get("/", follow_redirects=False).status_code == 401
        # A revoked token's session goes back to the form.
        client.cookies.set("synth_session", "revoked-token")
        assert client.get("/", headers=HTML, follow_redirects=False).status_code == 303


def _png(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200 and response.headers["content-type"] == "image/png", response.text[:200]
    assert response.content.startswith(b"\x89PNG\r\n\x1a\n")
    return np.asarray(Image.open(io.BytesIO(response.content)), dtype=float)


def _best_match(image: np.ndarray, volume: np.ndarray) -> int:
    """The slice of `volume` the image correlates with best."""
    return int(np.argmax([np.corrcoef(image.ravel(), s.ravel())[0, 1] for s in volume]))


@pytest.mark.slow
def test_job_page_timeline_evidence_previews_retry_and_download(tmp_path: Path, stack_no_pacs):
    stack = stack_no_pacs
    files = write_phantom_series(tmp_path / "t1", seed=931, n_slices=9, size=384)
    sources = load_series(files, pixels=True)
    job_id = stack.post(files).json()["job_id"]
    job = stack.wait_job(job_id)
    assert job["status"] == "done", job
    with stack.client() as c:  # a bearer header opens the pages too (a script, not a browser)
        page = c.get(f"/dashboard/jobs/{job_id}", headers=HTML)
        assert page.status_code == 200
        for step in ("received", "classified", "queued", "running", "done"):
            assert f'state-{step}">{step}</span>' in page.text, step
        assert "breast_t1_nc" in page.text and 'id="evidence"' in page.text
        assert 'id="domain-score"' in page.text and "in domain" in page.text
        images = re.findall(r'src="(/dashboard/previews/[^"]+\.png)"', page.text)
        rows_ = row_indices(len(files))
        assert len(images) == 2 * len(rows_)  # input and one output on each row
        out_dir = stack.data_dir / "jobs" / job_id / "output"
        outputs = load_series(sorted((out_dir / "00").glob("*.dcm")), pixels=True)
        out_positions = [slice_position(s) for s in outputs.slices]
        for row, i in enumerate(rows_):
            shown = _png(c.get(f"/dashboard/previews/{job_id}/input/{row}.png"))
            assert shown.shape == sources.volume[i].shape and shown.std() > 0
            assert _best_match(shown, sources.volume) == i  # the input slice of that row
            made = _png(c.get(f"/dashboard/previews/{job_id}/00/{row}.png"))
            j = _best_match(made, outputs.volume)
            assert out_positions[j] == pytest.approx(slice_position(sources.slices[i]))  # at the same position
            assert not np.array_equal(shown, made)
        assert c.get(f"/dashboard/previews/{job_id}/input/{len(rows_)}.png").status_code == 404
        zipped = c.get(f"/dashboard/jobs/{job_id}/result.zip")
        assert zipped.status_code == 200 and zipped.headers["content-type"] == "application/zip"
        # Retry (admin, CSRF): a failed or skipped job only; a skipped one makes a new job.
        assert c.post(f"/dashboard/jobs/{job_id}/retry").status_code == 409  # done
    other = write_phantom_series(tmp_path / "other", seed=932, n_slices=2, size=128)
    series_uid = generate_uid()
    for f in other:  # a series no route takes: skipped
        ds = dcmread(f)
        ds.Modality, ds.SeriesDescription, ds.SeriesInstanceUID = "OT", "secondary capture", series_uid
        ds.save_as(f)
    skipped_id = stack.post(other).json()["job_id"]
    assert stack.wait_job(skipped_id)["status"] == "skipped"
    with httpx.Client(base_url=stack.url, timeout=60) as browser_like:
        assert login(browser_like, stack.token).status_code == 303
        page = browser_like.get(f"/dashboard/jobs/{skipped_id}").text
        assert "Retry as a new job" in page
        r = browser_like.post(f"/dashboard/jobs/{skipped_id}/retry", data={"csrf": csrf_of(page)},
                              follow_redirects=False)
        assert r.status_code == 303
        new_id = r.headers["location"].rsplit("/", 1)[1]
        assert new_id != skipped_id and stack.wait_job(new_id)["status"] == "skipped"
        audit = [e["subject"] for e in stack.client().get("/audit", params={"kind": "api"}).json()
                 if e["action"] == "POST /dashboard/jobs/{job_id}/retry"]
        assert skipped_id in audit
