"""The viewer's serving, without a browser (issue 18): /viewer/ on the real app in-process
over a small dist laid out as OHIF's is, the session cookie standing for the token on the
viewer and DICOMweb's reads only, CORS (SYNTH_CORS_ORIGINS, default none), the fetch's
cache and its refusals, and the compose viewer pinned to the same OHIF as the fetch.
The real OHIF in a real browser: tests/test_viewer_browser.py."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from fastapi import HTTPException
from fastapi.testclient import TestClient

from dicom_synth.settings import Settings, get_settings
from service.gateway.auth import SESSION_COOKIE
from service.gateway.main import create_app
from service.gateway.routes import viewer as viewer_route
from service.viewer import fetch, site

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "admin-token-for-the-viewer-test"
BUNDLE = "app.bundle.0123456789abcdef.js"
INDEX = ('<html><head><link rel="manifest" href="/manifest.json"><script src="/app-config.js"></script>'
         f'<script>window.PUBLIC_URL="/"</script><script defer src="/{BUNDLE}"></script>'
         '<link href="/app.bundle.css" rel="stylesheet"></head><body></body></html>')


def _fake_dist(viewer_dir: Path) -> Path:
    """A dist with what OHIF's prebuilt one has at the places the rebase rules know, marked fetched."""
    dist = fetch.dist_dir(viewer_dir)
    (dist / "assets").mkdir(parents=True)
    (dist / "index.html").write_text(INDEX)
    (dist / BUNDLE).write_text('(() => {\n__webpack_require__.p = "/";\n})();\nconsole.log("ohif");\n')
    (dist / "worker.bundle.fedcba9876543210.js").write_text('__webpack_require__.p = "/";')
    (dist / "app.bundle.css").write_text("@font-face{src:url(/a.woff2)}")
    (dist / "assets" / "logo.svg").write_text("<svg/>")
    (dist / "app-config.js").write_text("window.config = {dataSources: ['the public demo server']};")
    site.write_rebased(dist, fetch.rebased_dir(dist), site.VIEWER_PREFIX)
    (dist.parent / fetch.MARKER).write_text("test\n")
    return dist


def _client(tmp_path: Path, **kw) -> TestClient:
    settings = Settings(data_dir=tmp_path / "data", broker_url="redis://127.0.0.1:1/0", api_token=TOKEN, **kw)
    app = create_app()
    app.dependency_overrides[get_settings] = lambda: settings
    return TestClient(app)


def test_the_gateway_serves_ohif_under_viewer_against_its_own_dicomweb(tmp_path: Path) -> None:
    _fake_dist(tmp_path / "viewer")
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    with _client(tmp_path, viewer_dir=tmp_path / "viewer") as c:
        index = c.get("/viewer/", headers=bearer)
        assert index.status_code == 200 and index.headers["content-type"].startswith("text/html")
        assert 'window.PUBLIC_URL="/viewer/"' in index.text and f'src="/viewer/{BUNDLE}"' in index.text
        assert 'href="/viewer/app.bundle.css"' in index.text and 'crossorigin="use-credentials"' in index.text
        assert 'src="/' not in index.text.replace('src="/viewer/', "")
        assert index.headers["cross-origin-opener-policy"] == "same-origin"
        # the viewer's own routes are its index page; its files are served as they are, or rebased
        assert c.get("/viewer/viewer?StudyInstanceUIDs=1.2.3", headers=bearer).text == index.text
        assert '__webpack_require__.p = "/viewer/";' in c.get(f"/viewer/{BUNDLE}", headers=bearer).text
        assert c.get("/viewer/worker.bundle.fedcba9876543210.js", headers=bearer).text.endswith('"/viewer/";')
        assert c.get("/viewer/app.bundle.css", headers=bearer).text == "@font-face{src:url(/viewer/a.woff2)}"
        assert c.get("/viewer/assets/logo.svg", headers=bearer).text == "<svg/>"
        assert c.get("/viewer/nothing.js", headers=bearer).status_code == 404
        (tmp_path / "data").mkdir(exist_ok=True)
        (tmp_path / "data" / "secret.txt").write_text("no")
        for outside in ("../../../data/secret.txt", "../rebased/../../../data/secret.txt",
                        str(tmp_path / "data" / "secret.txt")):
            with pytest.raises(HTTPException) as refused:
                viewer_route._file(fetch.dist_dir(tmp_path / "viewer"), outside)
            assert refused.value.status_code == 404
        # its app-config is ours, not the dist's: one DICOMweb source, on the page's origin
        config = c.get("/viewer/app-config.js", headers=bearer)
        assert "public demo" not in config.text and config.headers["content-type"].startswith("text/javascript")
        assert _evaluate(config.text, "http://gw:8000")["dataSources"][0]["configuration"]["qidoRoot"] == \
            "http://gw:8000/dicomweb"
        assert c.get("/viewer", headers=bearer, follow_redirects=False).headers["location"] == "/viewer/"


def test_not_installed_says_how_to_install(tmp_path: Path) -> None:
    with _client(tmp_path, viewer_dir=tmp_path / "none") as c:
        r = c.get("/viewer/", headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 404 and "make viewer" in r.json()["detail"]


def test_the_session_cookie_opens_the_viewer_and_dicomwebs_reads_only(tmp_path: Path) -> None:
    _fake_dist(tmp_path / "viewer")
    with _client(tmp_path, viewer_dir=tmp_path / "viewer") as c:
        # no credential: a page is sent to the login form, and back to the viewer after it
        r = c.get("/viewer/viewer?StudyInstanceUIDs=1.2", headers={"Accept": "text/html"}, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/dashboard/login?next=%2Fviewer%2Fviewer")
        assert c.get("/dicomweb/studies").status_code == 401
        c.cookies.set(SESSION_COOKIE, TOKEN)
        assert c.get("/viewer/").status_code == 200
        assert c.get("/dicomweb/studies").status_code == 200
        assert c.head("/dicomweb/studies").status_code in (200, 405)  # HEAD: no 401 either
        # but not a write, nor the rest of the JSON API
        related = {"Content-Type": 'multipart/related; type="application/dicom"; boundary=b'}
        assert c.post("/dicomweb/studies", content=b"--b--", headers=related).status_code == 401
        assert c.get("/jobs").status_code == 401
        assert c.get("/viewerx").status_code == 401
        c.cookies.set(SESSION_COOKIE, "not-a-token")
        assert c.get("/dicomweb/studies").status_code == 401


def test_cors_is_off_by_default_and_allows_the_listed_origins_without_credentials(tmp_path: Path) -> None:
    preflight = {"Origin": "http://viewer.example:3001", "Access-Control-Request-Method": "GET",
                 "Access-Control-Request-Headers": "authorization"}
    with _client(tmp_path) as c:
        r = c.options("/dicomweb/studies", headers=preflight)
        assert "access-control-allow-origin" not in r.headers and r.status_code in (401, 405)
    with _client(tmp_path, cors_origins="http://viewer.example:3001") as c:
        r = c.options("/dicomweb/studies", headers=preflight)
        assert r.status_code == 200, r.text
        assert r.headers["access-control-allow-origin"] == "http://viewer.example:3001"
        assert "authorization" in r.headers["access-control-allow-headers"].lower()
        assert "access-control-allow-credentials" not in r.headers
        assert c.options("/dicomweb/studies", headers={**preflight, "Origin": "http://evil.example"}).status_code == 400
        r = c.get("/dicomweb/studies", headers={"Origin": "http://viewer.example:3001",
                                                "Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://viewer.example:3001"
        # CORS lets a page read answers; it authenticates nothing
        assert c.get("/dicomweb/studies", headers={"Origin": "http://viewer.example:3001"}).status_code == 401
    with pytest.raises(ValueError):
        Settings(cors_origins="http://viewer.example/path")


def test_fetch_uses_its_cache_and_says_why_it_cannot_fetch(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))  # no npm
    with pytest.raises(fetch.ViewerFetchError, match="npm not found"):
        fetch.ensure_dist(tmp_path / "empty")
    dist = _fake_dist(tmp_path / "cached")
    assert fetch.ensure_dist(tmp_path / "cached") == dist  # fetched once: npm is not asked again
    (dist.parent / fetch.MARKER).unlink()  # a fetch that died before its end is not taken as one
    assert fetch.installed(tmp_path / "cached") is None
    with pytest.raises(fetch.ViewerFetchError, match="npm not found"):
        fetch.ensure_dist(tmp_path / "cached")


def test_a_dist_the_rebase_rules_do_not_fit_is_refused(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    dist.mkdir()
    (dist / "index.html").write_text(INDEX.replace('window.PUBLIC_URL="/"', 'window.PUBLIC_URL="/ohif/"'))
    (dist / BUNDLE).write_text('__webpack_require__.p = "/";')
    (dist / "app.bundle.css").write_text("url(/a.woff2)")
    with pytest.raises(ValueError, match="PUBLIC_URL"):
        site.write_rebased(dist, tmp_path / "out", site.VIEWER_PREFIX)


def _evaluate(config_js: str, origin: str) -> dict:
    """window.config as OHIF reads it: the file run by Node.js on a page at `origin`."""
    node = shutil.which("node")
    assert node, "node (Debian's nodejs, with npm) is needed to fetch and to check the viewer"
    script = (f"global.window = {{location: {{origin: {json.dumps(origin)}}}}};\n{config_js}\n"
              "console.log(JSON.stringify(window.config));")
    out = subprocess.run([node, "-e", script], capture_output=True, text=True, check=True, timeout=60)
    return json.loads(out.stdout)


def test_the_compose_viewer_is_the_same_ohif_against_orthancs_dicomweb() -> None:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    viewer = services["viewer"]
    build = viewer["build"]
    assert build["args"] == {"OHIF_VERSION": fetch.OHIF_VERSION, "OHIF_INTEGRITY": fetch.OHIF_INTEGRITY}
    assert services["orthanc"]["environment"]["DICOM_WEB_PLUGIN_ENABLED"] == "true"
    dockerfile = (ROOT / build["dockerfile"]).read_text()
    for src in re.findall(r"^COPY\s+(?!--from)(\S+)\s+\S+$", dockerfile, flags=re.M):
        assert (ROOT / src).exists(), src
    # the committed app-config is what service.viewer.site writes, pointed at nginx's /dicom-web/
    committed = (ROOT / "docker/viewer/app-config.js").read_text()
    assert committed == site.app_config("/dicom-web", "/", "Orthanc (demo PACS)")
    source = _evaluate(committed, "http://127.0.0.1:3001")["dataSources"][0]["configuration"]
    assert source["wadoRoot"] == source["qidoRoot"] == "http://127.0.0.1:3001/dicom-web"
    nginx = (ROOT / "docker/viewer/nginx.conf").read_text()
    assert re.search(r"location /dicom-web/ \{\s*proxy_pass http://orthanc:8042/dicom-web/;", nginx)
    assert "Authorization" not in nginx  # nginx adds no credentials: the browser logs in to Orthanc
