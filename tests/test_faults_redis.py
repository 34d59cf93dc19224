"""A real redis-server (the broker) killed and started again, without persistence and
with appendonly (the compose set-up), mid-flight and while series arrive over DICOM and
HTTP: every job ends done, and the PACS (a real Orthanc) holds exactly one synthetic
series per source series, none lost, none twice. Recovery is the outbox relay's: it
sends what was not sent, and after a broker restart what no task took yet."""

from __future__ import annotations

import time

import pytest
from pydicom import dcmread

from models.dce.phantom_dicom import write_phantom_series
from tests.faults import all_final, one_synthetic_series_each, record, wait_until
from tests.peers import start_redis, storescu
from tests.stack import start_stack

pytestmark = pytest.mark.slow


def _stack(tmp_path, redis, orthanc):
    return start_stack(tmp_path / "svc", broker_url=redis.url, pacs=f"ORTHANC@127.0.0.1:{orthanc.dicom_port}",
                       env={"SYNTH_OUTBOX_RELAY_SECONDS": "0.5"})


@pytest.mark.parametrize("appendonly", [False, True], ids=["no-persistence", "appendonly"])
def test_a_broker_restart_mid_flight_loses_and_duplicates_nothing(tmp_path, orthanc_factory, appendonly):
    redis = start_redis(tmp_path / "redis", appendonly=appendonly)
    orthanc = orthanc_factory()
    stack = _stack(tmp_path, redis, orthanc)
    try:
        sources = [write_phantom_series(tmp_path / f"s{i}", seed=1500 + i, n_slices=4, size=384) for i in range(6)]
        ids = []
        for files in sources:
            r = stack.post(files)
            assert r.status_code == 202, r.text
            ids.append(r.json()["job_id"])
        # mid-flight: some job has moved on, not every one has ended
        wait_until(lambda: any(stack.job(i)["status"] != "received" for i in ids), 120, "a job to start")
        before = sorted(stack.job(i)["status"] for i in ids)
        redis.kill()
        time.sleep(2.0)
        redis.restart()
        up = time.monotonic()
        jobs = all_final(stack, len(ids), timeout=400)
        recovery = time.monotonic() - up
        assert sorted(j["job_id"] for j in jobs) == sorted(ids)  # no job made twice, none lost
        assert all(j["status"] == "done" for j in jobs), [(j["status"], j["error"]) for j in jobs]
        lost, duplicated = one_synthetic_series_each(orthanc, sources)
        record(f"Redis killed and restarted ({'appendonly' if appendonly else 'no persistence'})",
               f"SIGKILL redis-server mid-flight (jobs {before}), 2 s down, started on the same port",
               jobs, lost, duplicated, recovery)
    finally:
        stack.stop()
        redis.stop()


def test_series_arriving_while_the_broker_is_down_are_processed_once_when_it_is_back(tmp_path, orthanc_factory):
    redis = start_redis(tmp_path / "redis", appendonly=True)
    orthanc = orthanc_factory()
    stack = _stack(tmp_path, redis, orthanc)
    try:
        over_dicom = write_phantom_series(tmp_path / "dicom", seed=1600, n_slices=4, size=384)
        over_http = write_phantom_series(tmp_path / "http", seed=1601, n_slices=4, size=384)
        redis.kill()
        storescu(over_dicom, "127.0.0.1", stack.dicom_port, stack.ae_title)  # every instance acked
        r = stack.post(over_http)
        # not a 500 that leaves a job behind: 202, the job recoverable through its outbox
        assert r.status_code == 202, r.text
        http_job = stack.job(r.json()["job_id"])
        assert http_job["status"] == "received"
        time.sleep(2.0)
        redis.restart()
        up = time.monotonic()
        jobs = all_final(stack, 2, timeout=400)
        recovery = time.monotonic() - up
        assert len(jobs) == 2 and all(j["status"] == "done" for j in jobs), jobs
        sources = {dcmread(f[0], stop_before_pixels=True).SeriesInstanceUID for f in (over_dicom, over_http)}
        assert sorted(j["source_series_uid"] for j in jobs) == sorted(sources)  # one job per series
        lost, duplicated = one_synthetic_series_each(orthanc, [over_dicom, over_http])
        time.sleep(3.0)  # nothing more comes late
        assert len(stack.jobs()) == 2
        one_synthetic_series_each(orthanc, [over_dicom, over_http])
        record("Redis down while series arrive", "redis-server killed; a series by C-STORE and one by "
               "POST /synthesize (202); started again 2 s later", jobs, lost, duplicated, recovery)
    finally:
        stack.stop()
        redis.stop()
