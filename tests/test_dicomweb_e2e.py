"""DICOMweb end to end: the service as `make run` starts it on a real redis-server, and
PyPI's dicomweb-client over real HTTP with the stack's bearer token. A series STOWed to
/dicomweb comes back as a synthetic series that QIDO-RS finds and WADO-RS returns; bad
STOW requests get PS3.18's statuses and store nothing."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from dicomweb_client.api import DICOMwebClient
from PIL import Image
from pydicom import dcmread
from pydicom.uid import generate_uid

from models.dce.phantom_dicom import write_phantom_series
from tests.stack import ServiceStack

pytestmark = pytest.mark.slow
FAILED, REFERENCED, REASON = "00081198", "00081199", "00081197"


def _client(stack: ServiceStack) -> DICOMwebClient:
    return DICOMwebClient(url=f"{stack.url}/dicomweb", headers={"Authorization": f"Bearer {stack.token}"})


def _wait_for_series(web: DICOMwebClient, study: str, count: int, timeout: float = 300) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = web.search_for_series(study)
        if len(found) >= count:
            return found
        time.sleep(0.2)
    raise AssertionError(f"{count} series of study {study} not found in {timeout} s: {found}")


def _stored_files(stack: ServiceStack) -> list:
    return [p for p in (stack.data_dir / "store").rglob("*.dcm") if ".incoming" not in p.parts]


def test_stow_then_qido_and_wado_return_the_synthetic_series(tmp_path, stack_no_pacs) -> None:
    stack = stack_no_pacs
    files = write_phantom_series(tmp_path / "t1", seed=903, n_slices=6, size=384)
    sources = [dcmread(f) for f in files]
    study = sources[0].StudyInstanceUID
    web = _client(stack)

    started = time.monotonic()
    answer = web.store_instances(sources, study_instance_uid=study)
    assert len(answer.ReferencedSOPSequence) == 6 and "FailedSOPSequence" not in answer
    assert {i.ReferencedSOPInstanceUID for i in answer.ReferencedSOPSequence} == {s.SOPInstanceUID for s in sources}

    series = _wait_for_series(web, study, 2)
    elapsed = time.monotonic() - started
    descriptions = {s["0008103E"]["Value"][0]: s for s in series}
    (synthetic,) = [s for d, s in descriptions.items() if d.startswith("SYNTHETIC")]
    synthetic_uid = synthetic["0020000E"]["Value"][0]
    assert synthetic["00201209"]["Value"] == [6]  # NumberOfSeriesRelatedInstances
    (job,) = stack.jobs()
    job = stack.wait_job(job["job_id"])
    assert job["status"] == "done" and synthetic_uid in job["output_series_uids"]
    print(f"6-slice series: STOW to synthetic series in QIDO in {elapsed:.1f} s")

    # QIDO: the study, found by its patient and a wildcard; the synthetic series by its description.
    (found_study,) = web.search_for_studies(search_filters={"PatientID": sources[0].PatientID})
    assert found_study["00201206"]["Value"] == [2]
    assert [s["0020000E"]["Value"][0] for s in web.search_for_series(
        study, search_filters={"SeriesDescription": "SYNTH*"})] == [synthetic_uid]
    instances = web.search_for_instances(study, synthetic_uid)
    assert len(instances) == 6
    assert len(web.search_for_instances(study, synthetic_uid, limit=2, offset=5)) == 1

    # WADO: the instances, their metadata, frames and a rendered frame.
    retrieved = web.retrieve_series(study, synthetic_uid)
    assert len(retrieved) == 6
    assert all(ds.SyntheticData == "YES" and ds.SeriesDescription.startswith("SYNTHETIC") for ds in retrieved)
    first = min(retrieved, key=lambda ds: int(ds.InstanceNumber))
    meta = web.retrieve_instance_metadata(study, synthetic_uid, first.SOPInstanceUID)
    assert meta["00080018"]["Value"] == [first.SOPInstanceUID] and "BulkDataURI" in meta["7FE00010"]
    assert len(web.retrieve_series_metadata(study, synthetic_uid)) == 6
    (frame,) = web.retrieve_instance_frames(study, synthetic_uid, first.SOPInstanceUID, [1])
    pixels = np.frombuffer(frame, dtype=first.pixel_array.dtype).reshape(first.Rows, first.Columns)
    assert np.array_equal(pixels, first.pixel_array)
    png = web.retrieve_instance_rendered(study, synthetic_uid, first.SOPInstanceUID, media_types=("image/png",))
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.size == (first.Columns, first.Rows)
    assert np.asarray(image).std() > 5  # an image, not a blank

    # the source is served too, and a missing series is 404
    source_uid = sources[0].SeriesInstanceUID
    assert len(web.retrieve_series(study, source_uid)) == 6
    with stack.client() as c:
        assert c.get(f"/dicomweb/studies/{study}/series/1.2.3/metadata").status_code == 404
        assert c.get(f"/dicomweb/studies/{study}/series/{synthetic_uid}/instances/"
                     f"{first.SOPInstanceUID}/frames/2").status_code == 404


def _multipart(parts: list[tuple[str, bytes]], boundary: str = "b0undary") -> bytes:
    body = b"".join(f"--{boundary}\r\nContent-Type: {kind}\r\n\r\n".encode() + data + b"\r\n" for kind, data in parts)
    return body + f"--{boundary}--\r\n".encode()


def test_bad_stow_requests_get_ps318_statuses_and_store_nothing(tmp_path, stack_no_pacs) -> None:
    stack = stack_no_pacs
    files = write_phantom_series(tmp_path / "t1", seed=904, n_slices=2, size=64)
    good = files[0].read_bytes()
    study = dcmread(files[0]).StudyInstanceUID
    related = 'multipart/related; type="application/dicom"; boundary=b0undary'
    with stack.client() as c:
        # a wrong content type: 415
        r = c.post("/dicomweb/studies", content=good, headers={"Content-Type": "application/dicom"})
        assert r.status_code == 415, r.text
        r = c.post("/dicomweb/studies", content=_multipart([("application/dicom", good)]),
                   headers={"Content-Type": 'multipart/related; type="application/json"; boundary=b0undary'})
        assert r.status_code == 415, r.text
        # a malformed multipart body (no closing boundary, garbage): 400
        r = c.post("/dicomweb/studies", content=b"--b0undary\r\nContent-Type: application/dicom\r\n\r\n" + good,
                   headers={"Content-Type": related})
        assert r.status_code == 400, r.text
        r = c.post("/dicomweb/studies", content=b"no boundary anywhere" * 10, headers={"Content-Type": related})
        assert r.status_code == 400, r.text
        # a non-DICOM part: 400 (nothing understood), FailedSOPSequence with 0xC000
        r = c.post("/dicomweb/studies", content=_multipart([("application/dicom", b"not dicom" * 50)]),
                   headers={"Content-Type": related})
        assert r.status_code == 400, r.text
        assert r.json()[FAILED]["Value"][0][REASON]["Value"] == [0xC000]
        # an instance of another study under /studies/{study}: 409, 0xA900
        other = generate_uid()
        r = c.post(f"/dicomweb/studies/{other}", content=_multipart([("application/dicom", good)]),
                   headers={"Content-Type": related})
        assert r.status_code == 409, r.text
        (item,) = r.json()[FAILED]["Value"]
        assert item[REASON]["Value"] == [0xA900] and item["00081155"]["Value"] == [dcmread(files[0]).SOPInstanceUID]
        assert "Warning" in r.headers and study in r.headers["Warning"]
        # a SOP class the service does not take: 409, 0x0122
        sr = dcmread(files[0])
        sr.SOPClassUID = sr.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
        buf = io.BytesIO()
        sr.save_as(buf)
        r = c.post("/dicomweb/studies", content=_multipart([("application/dicom", buf.getvalue())]),
                   headers={"Content-Type": related})
        assert r.status_code == 409 and r.json()[FAILED]["Value"][0][REASON]["Value"] == [0x0122]
        assert _stored_files(stack) == []
        assert stack.jobs() == []
        # without the submit scope: 401 with no token
        assert c.post("/dicomweb/studies", content=_multipart([("application/dicom", good)]),
                      headers={"Content-Type": related, "Authorization": "Bearer nope"}).status_code == 401
        # one good part and one bad: 202, the good one stored and referenced
        r = c.post(f"/dicomweb/studies/{study}", content=_multipart(
            [("application/dicom", good), ("application/dicom", b"junk" * 40)]), headers={"Content-Type": related})
        assert r.status_code == 202, r.text
        body = r.json()
        assert len(body[REFERENCED]["Value"]) == 1 and len(body[FAILED]["Value"]) == 1
        assert len(_stored_files(stack)) == 1


def test_a_series_stowed_in_two_requests_makes_one_job(tmp_path, stack_no_pacs) -> None:
    """The requests join the listener's series completion: the first half (the headers say
    6 images) waits, the second completes it, and one job holds all six."""
    stack = stack_no_pacs
    files = write_phantom_series(tmp_path / "t1", seed=906, n_slices=6, size=384)
    sources = sorted((dcmread(f) for f in files), key=lambda ds: int(ds.InstanceNumber))
    study = sources[0].StudyInstanceUID
    web = _client(stack)
    web.store_instances(sources[3:])
    time.sleep(0.5)
    assert stack.jobs() == []  # not whole: nothing announced yet
    web.store_instances(sources[:3], study_instance_uid=study)
    (job,) = stack.jobs()
    job = stack.wait_job(job["job_id"])
    assert job["status"] == "done", job
    inputs = list((stack.data_dir / "jobs" / job["job_id"] / "input").glob("*.dcm"))
    assert len(inputs) == 6
    assert len(stack.jobs()) == 1
