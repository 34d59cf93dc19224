"""Re-sending does not duplicate: the same series posted twice gives two jobs whose outputs
have the same UIDs, so the PACS (a real Orthanc) replaces them and holds one synthetic
series; the same series with one slice changed gives a second series."""

from __future__ import annotations

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from models.dce.phantom_dicom import write_phantom_series
from tests.stack import start_stack

pytestmark = pytest.mark.slow


def _sop_uids(orthanc, series_id: str) -> set[str]:
    return {inst["MainDicomTags"]["SOPInstanceUID"] for inst in orthanc.instances(series_id)}


@pytest.mark.parametrize("job_db_url", ["sqlite", "postgresql"], indirect=True)  # the PACS path on both stores
def test_the_same_series_posted_twice_is_stored_once(tmp_path, redis_server, orthanc_factory, job_db_url):
    orthanc = orthanc_factory()
    stack = start_stack(tmp_path / "svc", broker_url=redis_server.url, database_url=job_db_url,
                        pacs=f"{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}")
    try:
        files = write_phantom_series(tmp_path / "t1", seed=931, n_slices=3, size=384)  # the DCE model's domain
        study_uid = dcmread(files[0]).StudyInstanceUID
        jobs = []
        for _ in range(2):
            r = stack.post(files)
            assert r.status_code == 202, r.text
            jobs.append(stack.wait_job(r.json()["job_id"]))
        assert [j["status"] for j in jobs] == ["done", "done"], jobs
        assert jobs[0]["job_id"] != jobs[1]["job_id"]
        assert jobs[0]["output_series_uids"] == jobs[1]["output_series_uids"]
        (series,) = orthanc.series_in_study(study_uid)
        assert len(series["Instances"]) == len(files) == orthanc.instance_count()
        first = _sop_uids(orthanc, series["ID"])

        # one slice re-acquired (a new SOP Instance UID): a new output series, new instances
        ds = dcmread(files[0])
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.save_as(files[0])
        r = stack.post(files)
        job = stack.wait_job(r.json()["job_id"])
        assert job["status"] == "done", job
        assert job["output_series_uids"] != jobs[0]["output_series_uids"]
        assert orthanc.instance_count() == 2 * len(files)
        (new,) = [s for s in orthanc.series_in_study(study_uid) if s["ID"] != series["ID"]]
        assert not _sop_uids(orthanc, new["ID"]) & first
    finally:
        stack.stop()
