"""Inference by reference: POST /synthesize with {"study_instance_uid",
"series_instance_uid"} fetches a series that is already in the PACS and runs the same job
as an upload. The PACS is a real Orthanc (DIMSE, and Debian's orthanc-dicomweb plugin);
the series gets there by Orthanc's REST upload; the service runs as `make run` starts it.

Over C-MOVE (to our own AE, our listener receiving: exactly one job), over C-GET, after a
C-MOVE the PACS refuses (C-GET instead), and over WADO-RS; the synthetic series reaches
Orthanc again. An unknown series answers 404, a PACS that is down 502, a series past the
limits 413, and none of them stores anything."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from models.dce.phantom_dicom import write_phantom_series
from tests.peers import OrthancPeer, free_port
from tests.stack import ServiceStack, start_stack

pytestmark = pytest.mark.slow


def _into_orthanc(orthanc: OrthancPeer, files: list[Path]) -> tuple[str, str]:
    for f in files:
        orthanc.post("/instances", f.read_bytes())
    ds = dcmread(files[0], stop_before_pixels=True)
    return ds.StudyInstanceUID, ds.SeriesInstanceUID


def _by_reference(stack: ServiceStack, study: str, series: str, **more: str) -> httpx.Response:
    with stack.client() as c:
        return c.post("/synthesize", json={"study_instance_uid": study, "series_instance_uid": series, **more},
                      timeout=300)


def _stored(stack: ServiceStack) -> set[Path]:
    """Every file in the series store and the job folders (instances, records, snapshots)."""
    return {p for d in ("store", "jobs") for p in (stack.data_dir / d).rglob("*") if p.is_file()}


def _synthetic_series(orthanc: OrthancPeer, study: str, n: int):
    def found():
        for s in orthanc.series_in_study(study):
            if s["MainDicomTags"].get("SeriesDescription", "").startswith("SYNTHETIC") and len(s["Instances"]) == n:
                return s
        return None
    return orthanc.wait_for(found, timeout=120)


def _synthesize_by_reference(stack: ServiceStack, orthanc: OrthancPeer, files: list[Path], route: str) -> dict:
    """Request the series by reference; the job ends done and its result is in Orthanc."""
    study, series = _into_orthanc(orthanc, files)
    start = time.monotonic()
    r = _by_reference(stack, study, series)
    assert r.status_code == 202, r.text
    job = stack.wait_job(r.json()["job_id"])
    elapsed = time.monotonic() - start
    assert job["status"] == "done", job
    print(f"\nby reference over {route}: {len(files)} slices, request to done {elapsed:.1f} s "
          f"(answered 202 after {r.elapsed.total_seconds():.1f} s)")
    assert job["source_series_uid"] == series and job["task"] == "dce_phase1"
    synthetic = _synthetic_series(orthanc, study, len(files))
    assert synthetic["MainDicomTags"]["SeriesInstanceUID"] == job["output_series_uids"][0]
    assert orthanc.get_dicom(synthetic["Instances"][0]).SyntheticData == "YES"
    assert len(list((stack.data_dir / "store" / study / series).glob("*.dcm"))) == len(files)
    return job


def _refusals_store_nothing(stack: ServiceStack, orthanc: OrthancPeer, study: str, reachable_reason: str) -> None:
    """An unknown series: 404; the PACS stopped: 502; neither leaves a file or a job."""
    jobs, kept = len(stack.jobs()), _stored(stack)
    r = _by_reference(stack, study, generate_uid())
    assert r.status_code == 404, r.text
    assert "no series" in r.json()["detail"] or "no such series" in r.json()["detail"]
    orthanc.stop()
    r = _by_reference(stack, study, generate_uid())
    assert r.status_code == 502, r.text
    assert reachable_reason in r.json()["detail"], r.json()
    assert len(stack.jobs()) == jobs and _stored(stack) == kept


def _dimse(orthanc: OrthancPeer) -> str:
    return f"{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}"


def test_over_c_move_to_our_listener_makes_one_job(tmp_path, redis_server, orthanc_factory) -> None:
    listener_port = free_port()
    orthanc = orthanc_factory(modalities={"SYNTH": ("SYNTH", "127.0.0.1", listener_port)})
    stack = start_stack(tmp_path / "svc", broker_url=redis_server.url, pacs=_dimse(orthanc),
                        env={"SYNTH_DICOM_PORT": str(listener_port), "SYNTH_SERIES_QUIET_SECONDS": "2"})
    try:
        files = write_phantom_series(tmp_path / "t1", seed=931, n_slices=48, size=384)
        job = _synthesize_by_reference(stack, orthanc, files, "C-MOVE")
        # The listener received the 48 instances too; its series completion, long due by
        # now (grace 0.3 s, quiet 2 s), found them announced into the request's job.
        time.sleep(3)
        assert [j["job_id"] for j in stack.jobs()] == [job["job_id"]]
        study = dcmread(files[0]).StudyInstanceUID
        announced = json.loads((stack.data_dir / "store" / study / job["source_series_uid"]
                                / ".announced.json").read_text())
        assert announced["job_id"] == job["job_id"] and announced["reason"] == "by reference (C-MOVE)"
        _refusals_store_nothing(stack, orthanc, study, "cannot connect")
    finally:
        stack.stop()


def test_over_c_get_and_a_series_past_the_limit_is_413(tmp_path, redis_server, orthanc_factory) -> None:
    orthanc = orthanc_factory(modalities={"SYNTH": ("SYNTH", "127.0.0.1", free_port())})
    stack = start_stack(tmp_path / "svc", broker_url=redis_server.url, pacs=_dimse(orthanc),
                        env={"SYNTH_PACS_RETRIEVE": "get", "SYNTH_MAX_SERIES_INSTANCES": "48"})
    try:
        _synthesize_by_reference(stack, orthanc, write_phantom_series(tmp_path / "t1", seed=932, n_slices=48,
                                                                      size=384), "C-GET")
        kept = _stored(stack)
        study, series = _into_orthanc(orthanc, write_phantom_series(tmp_path / "big", seed=933, n_slices=49,
                                                                    size=32))
        r = _by_reference(stack, study, series)
        assert r.status_code == 413, r.text
        assert "SYNTH_MAX_SERIES_INSTANCES=48" in r.json()["detail"]
        assert len(stack.jobs()) == 1 and _stored(stack) == kept
    finally:
        stack.stop()


def test_a_pacs_that_does_not_know_our_ae_is_asked_by_c_get(tmp_path, redis_server, orthanc_factory) -> None:
    # Orthanc takes queries and C-GETs from anyone but moves only to modalities it knows.
    orthanc = orthanc_factory(extra_config={"DicomAlwaysAllowFind": True, "DicomAlwaysAllowGet": True})
    stack = start_stack(tmp_path / "svc", broker_url=redis_server.url, pacs=_dimse(orthanc))
    try:
        _synthesize_by_reference(stack, orthanc, write_phantom_series(tmp_path / "t1", seed=934, n_slices=8,
                                                                      size=384), "C-MOVE refused, then C-GET")
        assert "C-GET instead" in stack.log.read_text()
    finally:
        stack.stop()


def test_over_wado_rs(tmp_path, redis_server, orthanc_factory) -> None:
    orthanc = orthanc_factory(dicomweb=True)
    stack = start_stack(tmp_path / "svc", broker_url=redis_server.url, pacs=f"dicomweb+{orthanc.http_url}/dicom-web")
    try:
        files = write_phantom_series(tmp_path / "t1", seed=935, n_slices=48, size=384)
        _synthesize_by_reference(stack, orthanc, files, "WADO-RS")
        _refusals_store_nothing(stack, orthanc, dcmread(files[0]).StudyInstanceUID, "cannot reach")
    finally:
        stack.stop()
