"""HTTP authentication and scopes (issue 17), on the real app in-process with a real
tokens file: 401 without a token on every endpoint but /healthz, 403 without the scope,
the hashed file, the admin token `make run` makes, and SYNTH_AUTH=off."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from dicom_synth.settings import Settings, get_settings
from service.gateway.auth import OPEN_PATHS, ScopeCheck
from service.gateway.main import create_app
from service.tokens import GENERATED_TOKEN_FILE, add_token, ensure_admin_token, hash_token

ADMIN = "admin-token-for-the-test"
# Every endpoint with a path that names no real job: the scope is checked before the job.
ENDPOINTS = [("GET", "/jobs"), ("GET", "/jobs/nojob"), ("GET", "/jobs/nojob/result"),
             ("POST", "/jobs/nojob/resend"), ("POST", "/synthesize"), ("GET", "/docs"), ("GET", "/openapi.json"),
             ("GET", "/metrics"), ("GET", "/audit")]


def _settings(tmp_path: Path, **kw) -> Settings:
    return Settings(data_dir=tmp_path / "data", broker_url="redis://127.0.0.1:1/0", **kw)


@pytest.fixture
def tokens(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    path = tmp_path / "tokens"
    made = {scope: add_token(path, f"{scope}-client", [scope]) for scope in ("read", "submit")}
    return path, made


def _client(settings: Settings) -> TestClient:
    app = create_app()
    app.dependency_overrides[get_settings] = lambda: settings
    return TestClient(app)


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_every_route_declares_a_scope() -> None:
    """A new route without `requires(...)` would be open to any valid token: refuse that."""
    app = create_app()
    for route in app.routes:
        if not isinstance(route, APIRoute) or route.path in OPEN_PATHS:
            continue
        checks = [d.call for d in route.dependant.dependencies if isinstance(d.call, ScopeCheck)]
        assert checks, f"{route.methods} {route.path} names no scope"


def test_without_a_token_everything_but_healthz_is_401(tmp_path: Path, tokens) -> None:
    path, _ = tokens
    with _client(_settings(tmp_path, api_token=ADMIN, api_tokens_file=path)) as client:
        for method, url in ENDPOINTS:
            for headers in ({}, _bearer("wrong"), {"Authorization": f"Basic {ADMIN}"}):
                r = client.request(method, url, headers=headers)
                assert r.status_code == 401, (method, url, headers, r.status_code)
                assert r.headers["www-authenticate"].startswith("Bearer")
        assert client.get("/jobs", headers=_bearer("wrong")).headers["www-authenticate"].endswith(
            'error="invalid_token"')
        assert client.get("/healthz").status_code in (200, 503)  # no token asked (the broker is down here)


def test_scopes(tmp_path: Path, tokens) -> None:
    path, made = tokens
    with _client(_settings(tmp_path, api_token=ADMIN, api_tokens_file=path)) as client:
        read, submit, admin = _bearer(made["read"]), _bearer(made["submit"]), _bearer(ADMIN)
        r = client.post("/synthesize", headers=read)
        assert r.status_code == 403 and "submit" in r.json()["detail"]
        assert client.post("/jobs/nojob/resend", headers=read).status_code == 403
        assert client.get("/jobs", headers=read).status_code == 200
        assert client.get("/jobs/nojob", headers=read).status_code == 404
        assert client.get("/openapi.json", headers=read).status_code == 200
        assert client.get("/jobs", headers=submit).status_code == 403
        assert client.post("/synthesize", headers=submit).status_code not in (401, 403)  # no files: 4xx of its own
        # admin may do everything
        assert client.get("/jobs", headers=admin).status_code == 200
        assert client.post("/jobs/nojob/resend", headers=admin).status_code == 404
        assert client.post("/synthesize", headers=admin).status_code not in (401, 403)
        # a token added while the gateway runs works at once; the file holds only hashes
        late = add_token(path, "late", ["admin"])
        assert client.post("/jobs/nojob/resend", headers=_bearer(late)).status_code == 404
    text = path.read_text()
    assert all(t not in text for t in (*made.values(), late)) and hash_token(late) in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_auth_off_asks_no_token(tmp_path: Path) -> None:
    with _client(_settings(tmp_path, auth="off")) as client:
        assert client.get("/jobs").status_code == 200
        assert client.post("/jobs/nojob/resend").status_code == 404


def test_no_token_configured_refuses_everything(tmp_path: Path) -> None:
    with _client(_settings(tmp_path)) as client:
        assert client.get("/jobs").status_code == 401
        assert client.get("/jobs", headers=_bearer("")).status_code == 401


def test_make_run_admin_token(tmp_path: Path, tokens) -> None:
    settings = _settings(tmp_path)
    token, where = ensure_admin_token(settings)
    assert where == settings.data_dir / GENERATED_TOKEN_FILE and where.read_text().strip() == token
    assert stat.S_IMODE(where.stat().st_mode) == 0o600 and len(token) >= 40
    assert ensure_admin_token(settings) == (token, where)  # kept across restarts
    assert ensure_admin_token(_settings(tmp_path, api_token="mine")) == ("mine", None)
    assert ensure_admin_token(_settings(tmp_path, api_tokens_file=tokens[0])) is None
    assert ensure_admin_token(_settings(tmp_path, auth="off")) is None
    with _client(_settings(tmp_path, api_token=token)) as client:
        assert client.post("/jobs/nojob/resend", headers=_bearer(token)).status_code == 404


def test_tokens_command(tmp_path: Path) -> None:
    path = tmp_path / "t"
    r = subprocess.run([sys.executable, "-m", "service.tokens", "add", "ci", "--scopes", "submit,read",
                        "--file", str(path)], capture_output=True, text=True, check=True)
    token = r.stdout.strip()
    assert path.read_text() == f"ci {hash_token(token)} submit,read\n"
    r = subprocess.run([sys.executable, "-m", "service.tokens", "add", "ci", "--scopes", "root",
                        "--file", str(path)], capture_output=True, text=True)
    assert r.returncode == 2 and "root" in r.stderr
