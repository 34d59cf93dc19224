"""Issue 13, end to end with real peers: the loop guard (a synthetic series stored back
ends skipped, with and without Orthanc's forward script in the loop), a requested task
checked against the series (422, nothing stored), source_contrast, and the classifier's
evidence in GET /jobs/{id}."""

from __future__ import annotations

import io
import time
import zipfile
from pathlib import Path

import pytest
from pydicom import dcmread

from models.brain.phantom_dicom import write_brain_series
from models.ct.phantom_dicom import write_ct_series
from models.dce.phantom_dicom import write_phantom_series
from tests.peers import free_port, storescu
from tests.stack import start_stack
from tests.test_taskfit import _without_contrast_clues

pytestmark = pytest.mark.slow


def _synthetic_series(stack, tmp_path: Path) -> list[Path]:
    """A series this service made, as files a PACS would hold: the first output of a brain
    job (a synthetic brain contrast, which would route to brain_contrasts again)."""
    files = write_brain_series(tmp_path / "src", seed=990, n_slices=4, size=128, contrast="t1")
    r = stack.post(files)
    assert r.status_code == 202, r.text
    job = stack.wait_job(r.json()["job_id"])
    assert job["status"] == "done", job
    with stack.client() as c:
        zr = c.get(f"/jobs/{job['job_id']}/result")
    out = tmp_path / "synthetic"
    out.mkdir()
    with zipfile.ZipFile(io.BytesIO(zr.content)) as zf:
        for i, name in enumerate(n for n in zf.namelist() if n.startswith("00/")):
            (out / f"{i:03d}.dcm").write_bytes(zf.read(name))
    synthetic = sorted(out.glob("*.dcm"))
    assert len(synthetic) == len(files) and dcmread(synthetic[0]).SyntheticData == "YES"
    assert len({dcmread(f).SeriesInstanceUID for f in synthetic}) == 1
    return synthetic


def _wait_new_job(stack, known: set[str], timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        new = [j for j in stack.jobs() if j["job_id"] not in known]
        if new:
            return stack.wait_job(new[0]["job_id"])
        time.sleep(0.2)
    raise AssertionError(f"no new job within {timeout} s; log: {stack.log.read_text()[-3000:]}")


def _assert_loop_guard_skipped(job: dict) -> None:
    assert job["status"] == "skipped" and job["task"] is None and job["output_series_uids"] == [], job
    assert "synthetic" in job["error"] and "never synthesized from" in job["error"], job
    assert job["evidence"]["reason"] == job["error"]


def test_synthetic_series_sent_straight_to_the_listener_is_skipped(tmp_path, stack_no_pacs):
    stack = stack_no_pacs
    synthetic = _synthetic_series(stack, tmp_path)
    known = {j["job_id"] for j in stack.jobs()}
    storescu(synthetic, "127.0.0.1", stack.dicom_port, stack.ae_title, calling_ae="OTHERPACS")
    _assert_loop_guard_skipped(_wait_new_job(stack, known))
    assert len(stack.jobs()) == 2


def test_synthetic_series_forwarded_by_orthancs_script_is_skipped(tmp_path, redis_server, orthanc_factory):
    """The Lua script only stops series SYNTH itself stored; one that reaches the PACS
    another way (here: a workstation sends it) is forwarded, and the service refuses it."""
    port = free_port()
    orthanc = orthanc_factory(synth_port=port)
    stack = start_stack(tmp_path / "svc", broker_url=redis_server.url, env={"SYNTH_DICOM_PORT": str(port)})
    try:
        synthetic = _synthetic_series(stack, tmp_path)
        known = {j["job_id"] for j in stack.jobs()}
        storescu(synthetic, "127.0.0.1", orthanc.dicom_port, orthanc.aet, calling_ae="WORKSTATION")
        _assert_loop_guard_skipped(_wait_new_job(stack, known, timeout=180))
        assert orthanc.instance_count() == len(synthetic)  # nothing new came back to the PACS
    finally:
        stack.stop()


def test_mismatched_tasks_answer_422_with_the_reason_and_store_nothing(tmp_path, stack_no_pacs, realdata):
    stack = stack_no_pacs
    flair = write_brain_series(tmp_path / "flair", seed=991, n_slices=3, size=64, contrast="flair")
    ct = write_ct_series(tmp_path / "ct", seed=992, n_slices=3, size=64, region="head_neck")
    breast_synthetic = write_phantom_series(tmp_path / "b", seed=993, n_slices=2, size=64)
    for f in breast_synthetic:
        ds = dcmread(f)
        ds.SyntheticData = "YES"
        ds.save_as(f)
    cases = [
        (flair, {"task": "pseudo_mri"}, "needs a CT in Hounsfield units"),
        ([realdata / "pydicom_data/MR2_UNCR.dcm"], {"task": "pseudo_mri"}, "needs a CT in Hounsfield units"),
        (flair, {"task": "dce_phase1"}, "needs a breast MR non-contrast T1"),
        ([realdata / "pydicom_data/emri_small.dcm"], {"task": "dce_phase1"}, "needs a breast MR non-contrast T1"),
        (ct, {"task": "brain_contrasts"}, "needs a brain MR"),
        (ct, {"task": "auto", "source_contrast": "t1"}, "needs a brain MR"),
        ([realdata / "pydicom_data/emri_small.dcm"], {"task": "brain_contrasts"}, "pass source_contrast"),
        (flair, {"task": "brain_contrasts", "source_contrast": "pd"}, "valid: t1, t2, t1c, flair"),
        (flair, {"task": "dce_phase1", "source_contrast": "t1"}, "brain_contrasts only"),
        (breast_synthetic, {"task": "dce_phase1"}, "never synthesized from"),
    ]
    for files, form, words in cases:
        r = stack.post(files, **form)
        assert r.status_code == 422, (form, r.text)
        assert words in r.json()["detail"], (form, r.json())
    assert stack.jobs() == []
    assert not any((stack.data_dir / "store").rglob("*.dcm"))
    assert not any((stack.data_dir / "incoming").iterdir())  # staging removed
    assert not (stack.data_dir / "jobs").exists() or not any((stack.data_dir / "jobs").iterdir())


def test_brain_series_with_source_contrast_t1_is_synthesized_and_shows_evidence(tmp_path, stack_no_pacs):
    stack = stack_no_pacs
    files = _without_contrast_clues(
        write_brain_series(tmp_path / "t1", seed=994, n_slices=4, size=128, contrast="t1"))
    r = stack.post(files, task="brain_contrasts", source_contrast="t1")
    assert r.status_code == 202, r.text
    job = stack.wait_job(r.json()["job_id"])
    assert job["status"] == "done", job
    assert job["task"] == "brain_contrasts" and job["source_contrast"] == "t1"
    assert len(job["output_series_uids"]) == 3
    out = list((stack.data_dir / "jobs" / job["job_id"] / "output").rglob("*.dcm"))
    names = {dcmread(f).SeriesDescription for f in out}
    assert len(out) == 3 * len(files) and any("FLAIR" in n for n in names) and any("T1c" in n for n in names)
    evidence = job["evidence"]
    assert evidence["reason"] and evidence["header_probabilities"] and evidence["pixel_probabilities"]
    assert isinstance(evidence["confidence"], float)


def test_a_skipped_job_says_what_both_experts_said(tmp_path, stack_no_pacs):
    stack = stack_no_pacs
    files = write_phantom_series(tmp_path / "t2", seed=995, n_slices=3, size=128)
    for f in files:  # a breast T2 TSE: no route
        ds = dcmread(f)
        ds.SeriesDescription = "t2_tse_tra"
        ds.ScanningSequence, ds.SequenceVariant = "SE", "SK"
        ds.RepetitionTime, ds.EchoTime, ds.FlipAngle = 4500, 95, 150
        ds.save_as(f)
    job = stack.wait_job(stack.post(files).json()["job_id"])
    assert job["status"] == "skipped", job
    error, evidence = job["error"], job["evidence"]
    assert error.startswith(f"no synthesis route for series class {job['series_class']!r} (confidence "), error
    header_top = max(evidence["header_probabilities"].items(), key=lambda kv: kv[1])
    pixel_top = max(evidence["pixel_probabilities"].items(), key=lambda kv: kv[1])
    assert f"headers say {header_top[0]} ({header_top[1]:.2f})" in error
    assert f"pixels say {pixel_top[0]} ({pixel_top[1]:.2f})" in error
    assert evidence["reason"] in error
