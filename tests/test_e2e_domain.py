"""Issue 13, item 3 end to end: a series outside the brain model's training domain (the
phantom head resliced sagittally; the model was trained on axial slices) ends `skipped`
with the score, the threshold and what differs under SYNTH_DOMAIN_GUARD=refuse (the
default), and is synthesized with the warning in ImageComments and the job under warn."""

from __future__ import annotations

import copy
import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from dicom_synth.registry import load_card
from models.brain.phantom import generate_subject
from models.brain.phantom_dicom import brain_headers, to_stored
from tests.stack import start_stack

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not load_card("brain_contrasts", verify=False).extra.get("domain"),
                       reason="brain_contrasts card has no domain block yet"),
]


def write_sagittal_brain(out_dir: Path, seed: int, n_sagittal: int = 10) -> list[Path]:
    """Sagittal T1 images cut from a 64-slice axial phantom head (64 x 128 each, z up),
    with headers whose geometry says so."""
    subject = generate_subject(seed, n_slices=64, size=128)
    axial = brain_headers(subject, "t1")
    stored = to_stored(subject.images["t1"])  # (z, y, x), z head-wards
    px = float(axial[0].PixelSpacing[0])
    z_top = float(axial[-1].ImagePositionPatient[2])
    x0, y0 = (float(v) for v in axial[0].ImagePositionPatient[:2])
    series_uid = generate_uid(entropy_srcs=[f"sagittal-{seed}"])
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    columns = np.linspace(32, 95, n_sagittal).round().astype(int)  # through the head
    for k, x in enumerate(columns):
        ds = copy.deepcopy(axial[0])
        image = np.ascontiguousarray(stored[::-1, :, x])  # rows: z downwards, columns: y
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(
            entropy_srcs=[f"sagittal-{seed}-{k}"])
        ds.SeriesDescription = ds.ProtocolName = "t1_se_sag"
        ds.SeriesNumber, ds.InstanceNumber = 30, k + 1
        ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
        ds.ImagePositionPatient = [x0 + float(x) * px, y0, z_top]
        ds.Rows, ds.Columns = image.shape
        ds.PixelSpacing = [round(float(subject.slice_spacing_mm), 4), px]
        ds.SliceLocation = x0 + float(x) * px
        ds.PixelData = image.tobytes()
        path = out_dir / f"sag-{k:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _run(tmp_path: Path, redis_server, mode: str, files: list[Path]) -> tuple[dict, object]:
    stack = start_stack(tmp_path / f"svc-{mode}", broker_url=redis_server.url, env={"SYNTH_DOMAIN_GUARD": mode})
    try:
        r = stack.post(files, task="brain_contrasts", source_contrast="t1")
        assert r.status_code == 202, r.text
        job = stack.wait_job(r.json()["job_id"])
        outs = []
        if job["status"] == "done":
            with stack.client() as c:
                z = zipfile.ZipFile(io.BytesIO(c.get(f"/jobs/{job['job_id']}/result").content))
            outs = [dcmread(io.BytesIO(z.read(n))) for n in z.namelist()]
        return job, outs
    finally:
        stack.stop()


def test_sagittal_series_is_refused_then_synthesized_with_a_warning(tmp_path, redis_server):
    files = write_sagittal_brain(tmp_path / "sag", 53004)

    job, _ = _run(tmp_path, redis_server, "refuse", files)
    assert job["status"] == "skipped", job
    domain = job["evidence"]["domain"]
    assert domain["mode"] == "refuse" and domain["in_domain"] is False
    assert "sagittal; trained on axial" in domain["differences"]
    assert domain["score"] is not None and domain["threshold"] is not None
    for part in ("sagittal; trained on axial", f"threshold {domain['threshold']:.2f}",
                 "retrain on your own studies: see models/README.md"):
        assert part in job["error"], job["error"]
    assert not job.get("output_series_uids")

    job, outs = _run(tmp_path, redis_server, "warn", files)
    assert job["status"] == "done", job
    assert job["evidence"]["domain"]["mode"] == "warn" and job["evidence"]["domain"]["in_domain"] is False
    assert "outside the model's training domain" in job["evidence"]["domain"]["warning"]
    assert len(outs) == 3 * len(files)
    for ds in outs:
        assert "WARNING: input outside the model's training domain" in ds.ImageComments
        assert "sagittal; trained on axial" in ds.ImageComments
