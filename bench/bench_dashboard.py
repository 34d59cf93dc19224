"""The dashboard's page load time with many jobs in the database.

Fills an SQLite job database with N jobs (default 10,000, and 100 for comparison in the
same run), serves the real gateway app with uvicorn on loopback, and measures
- server time: GET / and GET of a filtered page (state=failed, task, calling AE), and of
  the polled fragment, median of --repeat requests over loopback with a session cookie;
- browser time: headless Chromium (tests/browser.py) loading `/`, navigation start to the
  load event, median of --repeat loads.

    .venv/bin/python -m bench.bench_dashboard [--jobs 10000] [--repeat 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path

import httpx
import uvicorn
from sqlalchemy import insert

from dicom_synth.domain import Job, JobStatus
from dicom_synth.jobsearch import search_digest, search_key
from dicom_synth.jobstore import JobStore, jobs, search_columns
from dicom_synth.settings import Settings, get_settings
from service.gateway.main import create_app
from tests.peers import LOOPBACK, free_port

TOKEN = "bench-dashboard-admin-token"
STATES = (JobStatus.DONE, JobStatus.DONE, JobStatus.DONE, JobStatus.FAILED, JobStatus.SKIPPED, JobStatus.RUNNING)
TASKS = ("dce_phase1", "pseudo_mri", "brain_contrasts")
FILTERED = "/?state=failed&task=dce_phase1&ae=MOD1"


def fill(store: JobStore, n: int, key: bytes) -> None:
    """n jobs over 30 days, in batches of one transaction each."""
    start = time.time() - 30 * 86400
    batch = []
    for i in range(n):
        at = start + i * (30 * 86400 / n)
        status = STATES[i % len(STATES)]
        job = Job(job_id=f"{i:032x}", status=status, source_series_uid=f"1.2.826.0.1.{i}", study_instance_uid="1.2",
                  origin=f"dicom:MOD{i % 4}", progress=1.0 if status.is_final else 0.5, series_class="breast_t1_nc",
                  task=TASKS[i % 3], created_at=at, updated_at=at + 20, error="boom" if status == "failed" else None,
                  timeline={"received": at, "classified": at + 1, "queued": at + 2, "running": at + 3,
                            str(status): at + 20},
                  accession_digest=search_digest(key, f"ACC{i:06d}"),
                  patient_digest=search_digest(key, f"PID{i % 997:04d}"))
        batch.append({"job_id": job.job_id, "status": str(status), "created_at": at, "updated_at": at + 20,
                      "body": json.dumps(asdict(job)), **search_columns(job)})
        if len(batch) == 1000 or i == n - 1:
            with store.engine.begin() as conn:
                conn.execute(insert(jobs), batch)
            batch = []


def serve(settings: Settings) -> tuple[uvicorn.Server, str]:
    app = create_app()
    app.dependency_overrides[get_settings] = lambda: settings
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host=LOOPBACK, port=port, log_level="warning", lifespan="off"))
    threading.Thread(target=server.run, daemon=True).start()
    url = f"http://{LOOPBACK}:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not server.started:
        time.sleep(0.05)
    return server, url


def log_in(client: httpx.Client) -> None:
    import re

    form = client.get("/dashboard/login")
    nonce = re.search(r'name="nonce" value="([^"]+)"', form.text).group(1)
    r = client.post("/dashboard/login", data={"token": TOKEN, "nonce": nonce, "next": "/"}, follow_redirects=False)
    if r.status_code != 303:
        raise RuntimeError(f"login answered {r.status_code}")


def server_ms(client: httpx.Client, path: str, repeat: int) -> float:
    client.get(path).raise_for_status()  # warm
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        client.get(path).raise_for_status()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def browser_ms(url: str, repeat: int) -> float:
    from selenium.webdriver.common.by import By

    from tests.browser import chromium

    with chromium() as driver:
        driver.get(url + "/dashboard/login")
        driver.find_element(By.NAME, "token").send_keys(TOKEN)
        driver.find_element(By.CSS_SELECTOR, "form.login button").click()
        times = []
        for _ in range(repeat + 1):
            driver.get(url + "/")
            times.append(driver.execute_script(
                "var n = performance.getEntriesByType('navigation')[0]; return n.loadEventEnd - n.startTime;"))
        return statistics.median(times[1:])


def measure(n: int, repeat: int, with_browser: bool) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="bench-dashboard-") as tmp:
        settings = Settings(data_dir=Path(tmp) / "data", broker_url="redis://127.0.0.1:1/0", api_token=TOKEN)
        store = JobStore(settings.jobs_db_url)
        t0 = time.perf_counter()
        fill(store, n, search_key(settings))
        filled = time.perf_counter() - t0
        server, url = serve(settings)
        try:
            with httpx.Client(base_url=url, timeout=60) as client:
                log_in(client)
                out = {"jobs": n, "fill_s": round(filled, 1),
                       "server_ms_index": server_ms(client, "/", repeat),
                       "server_ms_filtered": server_ms(client, FILTERED, repeat),
                       "server_ms_page_100": server_ms(client, "/?page=100", repeat),
                       "server_ms_search": server_ms(client, "/?q=PID0042", repeat),
                       "server_ms_poll": server_ms(client, "/dashboard/live/jobs", repeat)}
            if with_browser:
                out["browser_ms_index"] = browser_ms(url, repeat)
        finally:
            server.should_exit = True
        return {k: round(v, 1) if isinstance(v, float) else v for k, v in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--no-browser", action="store_true")
    args = parser.parse_args()
    small = measure(100, args.repeat, not args.no_browser)
    large = measure(args.jobs, args.repeat, not args.no_browser)
    print(json.dumps({"small": small, "large": large,
                      "ratio_large_over_small": {k: round(large[k] / small[k], 2) for k in large
                                                 if k.endswith("_ms_index") or k.startswith("server_ms")}}, indent=1))


if __name__ == "__main__":
    main()
