"""No Docker engine runs here: check what can be checked without one — the compose
file parses, every command names a module that exists, every COPY source exists,
the environment validates as Settings, and no image installs torch."""

import importlib.util
import re
from pathlib import Path

import yaml

from dicom_synth.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def _compose():
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_services_and_commands():
    compose = _compose()
    services = compose["services"]
    assert {"redis", "gateway", "listener", "gpu-worker", "orthanc", "export-worker"} <= set(services)
    for name, svc in services.items():
        build = svc.get("build")
        if build:
            assert (ROOT / build["dockerfile"]).is_file(), name
        cmd = svc.get("command") or []
        for i, word in enumerate(cmd):
            if word == "-m" or (word == "-A"):
                module = cmd[i + 1]
                assert importlib.util.find_spec(module) is not None, f"{name}: no module {module}"
            if ":app" in word:
                module = word.split(":")[0]
                assert importlib.util.find_spec(module) is not None, f"{name}: no module {module}"
    assert services["gpu-worker"]["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"


def _interpolate(value: str, **env: str) -> str:
    """Compose's `${NAME:?message}` / `${NAME}`, with the values given (as from an .env file)."""
    return re.sub(r"\$\{(\w+)(?::\?[^}]*)?\}", lambda m: env[m.group(1)], value)


def test_compose_environment_is_valid_settings(monkeypatch):
    env = _compose()["x-synth-env"]
    secrets = {"SYNTH_API_TOKEN": "a" * 64, "POSTGRES_PASSWORD": "0123abcd" * 4}
    for key, value in env.items():
        monkeypatch.setenv(key, _interpolate(str(value), **secrets))
    s = Settings()
    assert s.pacs is not None and s.pacs.ae_title == "ORTHANC" and s.broker_url.startswith("redis://")
    from sqlalchemy.engine import make_url

    url = make_url(s.jobs_db_url)  # every node's job store: the compose PostgreSQL
    assert (url.drivername, url.host, url.port, url.database) == ("postgresql+psycopg", "postgres", 5432, "synth")
    assert url.password == secrets["POSTGRES_PASSWORD"]


SCALED = ("listener", "classify-worker", "gpu-worker", "export-worker")


def test_compose_scales_workers_and_listeners_on_shared_postgres_redis_and_volume():
    """`docker compose up --scale gpu-worker=N --scale listener=M` (issue 14): a scaled
    service has no container name and publishes no host port (two replicas could not
    both bind it); every synth service waits for PostgreSQL, mounts the one data volume,
    names its Celery worker and its metrics folder by its container's host name; the
    listeners are reached through one published port (dicom-lb, HAProxy)."""
    compose = _compose()
    services = compose["services"]
    synth = {n: s for n, s in services.items() if s.get("image", "").startswith("dicom-synth/")}
    assert set(SCALED) | {"gateway", "sweeper"} <= set(synth)
    for name in SCALED:
        svc = services[name]
        assert "container_name" not in svc and not svc.get("ports"), f"{name} cannot be scaled"
        assert "%h" in svc["environment"]["PROMETHEUS_MULTIPROC_DIR"], name  # pid 1 in each replica
    for name, svc in synth.items():
        assert "synth-data:/data" in svc["volumes"], name
        assert svc["depends_on"]["postgres"] == {"condition": "service_healthy"}, name
        assert svc["environment"]["SYNTH_DATABASE_URL"].startswith("postgresql+psycopg://"), name
        command = svc.get("command") or ["celery", "-n", "gpu@%h"]  # gpu-worker: its Dockerfile's CMD
        if "celery" in command:
            assert command[command.index("-n") + 1].endswith("@%h"), name  # one Celery name per replica
    gpu_cmd = (ROOT / "docker/worker-gpu.Dockerfile").read_text()
    assert '"-n", "gpu@%h"' in gpu_cmd
    assert "synth-data" in compose["volumes"] and "postgres-data" in compose["volumes"]
    pg = services["postgres"]
    assert pg["image"].startswith("postgres:") and "pg_isready" in pg["healthcheck"]["test"]
    assert pg["environment"]["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")
    assert not pg.get("ports")  # reached over the compose network only

    lb = services["dicom-lb"]
    assert lb["ports"] == ["127.0.0.1:11112:11112"]
    source = lb["volumes"][0].split(":")[0]
    cfg = (ROOT / source).read_text()
    assert re.search(r"^\s*mode tcp", cfg, re.M) and re.search(r"^\s*bind :11112", cfg, re.M)
    assert re.search(r"^\s*server-template \w+ \d+ listener:11112 .*resolvers docker", cfg, re.M)
    orthanc = __import__("json").loads((ROOT / "docker/orthanc/orthanc.json").read_text())
    assert orthanc["DicomModalities"]["SYNTH"][1:] == ["listener", 11112]  # every replica, by Docker's DNS


def test_the_dicom_balancer_config_is_valid_haproxy():
    import shutil
    import subprocess

    import pytest

    binary = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin")
    if binary is None:
        pytest.fail("haproxy is not installed here (make system-deps installs it) to check docker/haproxy/haproxy.cfg")
    r = subprocess.run([binary, "-c", "-f", str(ROOT / "docker/haproxy/haproxy.cfg")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_metrics_folder_named_with_percent_h_is_one_per_host(tmp_path):
    """PROMETHEUS_MULTIPROC_DIR=/data/metrics/listener-%h: each replica (its own host name)
    counts into its own folder, and the gateway merges them all."""
    import socket
    import subprocess
    import sys

    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics" / "listener-%h"), "PATH": "/usr/bin:/bin"}
    code = ("from dicom_synth import metrics; metrics.JOBS_CREATED.labels(origin='dicom').inc(); "
            "print(metrics.multiprocess_dir())")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, check=True)
    folder = tmp_path / "metrics" / f"listener-{socket.gethostname()}"
    assert out.stdout.strip() == str(folder) and list(folder.glob("counter_*.db"))


def test_dockerfiles_copy_existing_paths_and_exclude_torch():
    for dockerfile in (ROOT / "docker").glob("*.Dockerfile"):
        text = dockerfile.read_text()
        for src in re.findall(r"^COPY\s+(\S+)\s+\S+$", text, flags=re.M):
            assert (ROOT / src).exists(), f"{dockerfile.name}: COPY {src} does not exist"
        assert "torch" not in text.replace("find_spec('torch')", ""), dockerfile.name
        assert "find_spec('torch') is not None" in text  # the build fails if torch slipped in


def test_runtime_dependencies_exclude_torch():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not any(d.startswith("torch") for d in project["dependencies"])
    assert "torch==2.13.0" in project["optional-dependencies"]["train"]
    assert any(d.startswith("onnxruntime-gpu") for d in project["optional-dependencies"]["gpu"])


def test_compose_publishes_ports_on_loopback_and_asks_for_secrets():
    """Least exposure (issue 17): every published port binds 127.0.0.1, the gateway's
    admin token and the demo Orthanc's password have no default."""
    compose = _compose()
    published = {name: svc["ports"] for name, svc in compose["services"].items() if svc.get("ports")}
    assert {"gateway", "dicom-lb", "orthanc"} <= set(published)
    for name, ports in published.items():
        for port in ports:
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond this host"
    assert compose["x-synth-env"]["SYNTH_API_TOKEN"].startswith("${SYNTH_API_TOKEN:?")
    assert "${ORTHANC_DEMO_PASSWORD:?" in compose["services"]["orthanc"]["environment"]["ORTHANC__REGISTERED_USERS"]


def test_demo_orthanc_config_requires_a_login(tmp_path):
    """The demo orthanc.json in a real Orthanc, with the users as the image makes them from
    ORTHANC__REGISTERED_USERS (a second configuration file): no login, no answer."""
    import base64
    import json
    import subprocess
    import time
    import urllib.error
    import urllib.request

    from tests.peers import PEER_ENV, free_port, require_binary

    demo = json.loads((ROOT / "docker/orthanc/orthanc.json").read_text())
    assert demo["AuthenticationEnabled"] is True and "RegisteredUsers" not in demo
    http_port = free_port()
    # Where this host differs from the container: ports, storage, no Lua script, loopback only.
    demo.update(HttpPort=http_port, DicomPort=free_port(), LuaScripts=[], DicomModalities={},
                StorageDirectory=str(tmp_path / "db"), IndexDirectory=str(tmp_path / "db"))
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "orthanc.json").write_text(json.dumps(demo))
    (tmp_path / "cfg" / "users.json").write_text(json.dumps({"RegisteredUsers": {"demo": "s3cret-demo"}}))
    proc = subprocess.Popen([require_binary("Orthanc"), "--no-jobs", str(tmp_path / "cfg")], env=PEER_ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def status(auth: str | None) -> int:
        req = urllib.request.Request(f"http://127.0.0.1:{http_port}/system")
        if auth:
            req.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
        try:
            with urllib.request.urlopen(req, timeout=5) as rsp:
                return rsp.status
        except urllib.error.HTTPError as exc:
            return exc.code

    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                first = status(None)
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "Orthanc did not start"
                time.sleep(0.2)
        assert first == 401
        assert status("demo:wrong") == 401
        assert status("demo:s3cret-demo") == 200
    finally:
        proc.kill()
        proc.wait(10)


def test_compose_prometheus_and_grafana_dashboard_show_the_service_metrics():
    """Prometheus scrapes the gateway, Grafana provisions the dashboard from docker/, every
    query of the dashboard names a metric the service exports, and each service of the
    compose file counts into its own folder under /data/metrics (the gateway merges them)."""
    import json

    from prometheus_client import Counter, Histogram

    from dicom_synth import metrics

    services = _compose()["services"]
    assert {"prometheus", "grafana"} <= set(services)
    grafana_password = services["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"]
    assert grafana_password.startswith("${GRAFANA_ADMIN_PASSWORD:?")
    for name in ("prometheus", "grafana"):
        for volume in services[name]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./") and not volume.lstrip().startswith("#"):
                assert (ROOT / source).exists(), f"{name}: {source} does not exist"
    prom = yaml.safe_load((ROOT / "docker/prometheus/prometheus.yml").read_text())
    (job,) = prom["scrape_configs"]
    assert job["metrics_path"] == "/metrics" and job["static_configs"][0]["targets"] == ["gateway:8000"]
    assert services["gateway"]["environment"]["SYNTH_METRICS_PUBLIC"] == "true"  # no token in prometheus.yml

    dirs = {name: svc["environment"].get("PROMETHEUS_MULTIPROC_DIR") for name, svc in services.items()
            if svc.get("image", "").startswith("dicom-synth/")}
    assert all(d and d.startswith("/data/metrics/") for d in dirs.values()), dirs
    assert len(set(dirs.values())) == len(dirs)  # pid 1 in every container: one folder each

    exported = {m._name for m in vars(metrics).values() if isinstance(m, Counter | Histogram)}
    exported |= {"synth_jobs", "synth_queue_depth", "synth_disk_free_bytes", "synth_scrape_ok"}
    dashboard = json.loads((ROOT / "docker/grafana/dicom-synth.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    named = {re.sub(r"_(total|bucket|count|sum)$", "", m) for e in exprs for m in re.findall(r"\bsynth_[a-z_]+", e)}
    assert named <= exported, named - exported  # no query of a metric that does not exist
    assert exported <= named, exported - named  # and every metric is on the dashboard
