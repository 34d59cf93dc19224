"""The job store's disk fills up (the SQLite job database on a real small tmpfs, filled to
the last byte by another file): new work is refused with the reason (HTTP 507, DICOM
0xA700) and leaves nothing behind, a job in flight is not failed for it, no child
crash-loops, /healthz says the database is unwell; when space returns the service takes
work again by itself and every job runs to done, once."""

from __future__ import annotations

import errno
import time
from pathlib import Path

import pytest
from pydicom import dcmread

from models.dce.phantom_dicom import write_phantom_series
from tests.faults import (
    all_final,
    c_store_statuses,
    children,
    one_synthetic_series_each,
    record,
    wait_until,
)
from tests.peers import mounted_tmpfs
from tests.stack import start_stack

pytestmark = pytest.mark.slow


@pytest.fixture
def db_disk(tmp_path: Path):
    with mounted_tmpfs(tmp_path / "db", "4m") as mnt:
        yield mnt


def fill(folder: Path) -> Path:
    """Write zeros into `folder` until its file system has no byte left; returns the file."""
    filler = folder / "filler"
    chunk = b"\0" * 65536
    with filler.open("wb", buffering=0) as f:
        try:
            while True:
                f.write(chunk)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
        try:
            while True:
                f.write(b"\0")
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    return filler


def test_a_full_job_store_refuses_new_work_stays_up_and_recovers_by_itself(
        tmp_path, db_disk, redis_server, orthanc_factory):
    orthanc = orthanc_factory()
    stack = start_stack(tmp_path / "svc", broker_url=redis_server.url,
                        pacs=f"ORTHANC@127.0.0.1:{orthanc.dicom_port}",
                        database_url=f"sqlite:///{db_disk / 'jobs.sqlite3'}",
                        env={"SYNTH_OUTBOX_RELAY_SECONDS": "0.5"})
    try:
        before = write_phantom_series(tmp_path / "before", seed=1700, n_slices=4, size=384)
        in_flight = write_phantom_series(tmp_path / "flight", seed=1701, n_slices=4, size=384)
        by_http = write_phantom_series(tmp_path / "http", seed=1702, n_slices=4, size=384)
        by_dicom = write_phantom_series(tmp_path / "dicom", seed=1703, n_slices=4, size=384)
        assert stack.wait_job(stack.post(before).json()["job_id"])["status"] == "done"

        flight = stack.post(in_flight)
        assert flight.status_code == 202, flight.text
        filler = fill(db_disk)  # while that job runs
        full_at = time.monotonic()
        r = stack.post(by_http)
        assert r.status_code == 507, r.text
        assert "job store" in r.json()["detail"], r.text
        statuses = c_store_statuses(stack.dicom_port, by_dicom)
        assert statuses == [0xA700] * len(by_dicom), [hex(s) for s in statuses]
        with stack.client() as c:
            health = c.get("/healthz")
        assert health.status_code == 503 and not health.json()["database"]["ok"], health.text
        assert "job store" in health.json()["database"]["error"]
        # nothing of the refused series is kept: no job, no stored file for recovery to turn into one
        assert len(stack.jobs()) == 2
        refused = {dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in by_http + by_dicom}
        assert not [p for p in (stack.data_dir / "store").rglob("*.dcm") if p.stem in refused]
        restarts = {name: c["restarts"] for name, c in children(stack).items()}
        time.sleep(5.0)  # the disk stays full: no child crash-loops, the job in flight is not failed
        now = children(stack)
        assert all(c["up"] for c in now.values()) and {n: c["restarts"] for n, c in now.items()} == restarts
        assert stack.job(flight.json()["job_id"])["status"] != "failed"

        filler.unlink()  # space returns; nobody restarts anything
        freed = time.monotonic()
        wait_until(lambda: _healthy(stack), 60, "/healthz to say ok again")
        r = stack.post(by_http)
        assert r.status_code == 202, r.text
        assert c_store_statuses(stack.dicom_port, by_dicom) == [0] * len(by_dicom)
        jobs = all_final(stack, 4, timeout=300)
        recovery = time.monotonic() - freed
        assert all(j["status"] == "done" for j in jobs), [(j["status"], j["error"]) for j in jobs]
        lost, duplicated = one_synthetic_series_each(orthanc, [before, in_flight, by_http, by_dicom])
        record("job store disk full", f"SQLite job DB on a 4 MiB tmpfs filled by a file for "
               f"{freed - full_at:.0f} s, one job in flight; HTTP 507, DICOM 0xA700 meanwhile",
               jobs, lost, duplicated, recovery)
    finally:
        stack.stop()


def _healthy(stack) -> bool:
    with stack.client() as c:
        return c.get("/healthz").status_code == 200
