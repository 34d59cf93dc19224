"""Export over DICOMweb: SYNTH_PACS=dicomweb+http://… STOWs the results, with the
C-STORE exporter's retries, terminal failure and POST /jobs/{id}/resend. The PACS is a
real Orthanc with Debian's orthanc-dicomweb plugin; the client is dicomweb-client."""

from __future__ import annotations

import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread

from models.dce.phantom_dicom import write_phantom_series
from tests.peers import free_port
from tests.stack import start_stack

pytestmark = pytest.mark.slow


def _synthetic_series(orthanc, study: str) -> list[dict]:
    return [s for s in orthanc.series_in_study(study)
            if s["MainDicomTags"].get("SeriesDescription", "").startswith("SYNTHETIC")]


def test_a_series_stowed_to_orthanc_comes_back_to_it_by_stow(tmp_path, redis_server, orthanc_factory) -> None:
    orthanc = orthanc_factory(dicomweb=True)
    files = write_phantom_series(tmp_path / "t1", seed=911, n_slices=6, size=384)
    sources = [dcmread(f) for f in files]
    study = sources[0].StudyInstanceUID
    DICOMwebClient(url=f"{orthanc.http_url}/dicom-web").store_instances(sources)
    assert len(orthanc.series_in_study(study)) == 1

    stack = start_stack(tmp_path / "svc", broker_url=redis_server.url, pacs=f"dicomweb+{orthanc.http_url}/dicom-web")
    try:
        r = stack.post(files)
        assert r.status_code == 202, r.text
        job = stack.wait_job(r.json()["job_id"])
        assert job["status"] == "done", job
        (synthetic,) = orthanc.wait_for(lambda: _synthetic_series(orthanc, study), timeout=30)
        assert synthetic["MainDicomTags"]["SeriesInstanceUID"] == job["output_series_uids"][0]
        assert len(synthetic["Instances"]) == 6
        ds = orthanc.get_dicom(synthetic["Instances"][0])
        assert ds.SyntheticData == "YES" and ds.StudyInstanceUID == study
    finally:
        stack.stop()


def test_a_dicomweb_pacs_that_is_down_fails_the_job_and_resend_delivers(tmp_path, redis_server,
                                                                        orthanc_factory) -> None:
    port = free_port()
    stack = start_stack(tmp_path / "svc", broker_url=redis_server.url,
                        pacs=f"dicomweb+http://127.0.0.1:{port}/dicom-web")
    try:
        files = write_phantom_series(tmp_path / "t1", seed=912, n_slices=4, size=384)
        study = dcmread(files[0]).StudyInstanceUID
        r = stack.post(files)
        assert r.status_code == 202, r.text
        job_id = r.json()["job_id"]
        job = stack.wait_job(job_id)
        assert job["status"] == "failed", job
        assert "gave up after 3 attempt(s)" in job["error"] and "cannot reach" in job["error"], job["error"]
        assert "0 of 4 files acknowledged" in job["error"]

        orthanc = orthanc_factory(dicomweb=True, extra_config={"HttpPort": port})
        with stack.client() as c:
            assert c.post(f"/jobs/{job_id}/resend").status_code == 202
        job = stack.wait_job(job_id, statuses=("done",), timeout=120)
        (synthetic,) = orthanc.wait_for(lambda: _synthetic_series(orthanc, study), timeout=30)
        assert len(synthetic["Instances"]) == 4
    finally:
        stack.stop()
