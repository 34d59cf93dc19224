"""The `dicom-synth` console script, as a user runs it from the virtual environment."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from pydicom import dcmread

from models.dce.phantom_dicom import write_phantom_series

EXE = Path(sys.executable).with_name("dicom-synth")


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(EXE), *args], capture_output=True, text=True, timeout=300)


def test_classify_prints_one_json_line_per_series(tmp_path, realdata):
    write_phantom_series(tmp_path / "in" / "deep" / "t1", seed=961, n_slices=3, size=64)
    r = _run("classify", str(tmp_path / "in"), str(realdata / "nibabel"))
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert {"series_instance_uid", "series_description", "label", "confidence", "evidence", "route"} <= set(rows[0])
    t1 = [row for row in rows if row["series_description"] == "t1_fl3d_tra_nonfs"]
    assert len(t1) == 1 and t1[0]["label"] == "breast_t1_nc" and t1[0]["route"] == "dce_phase1"
    assert len(rows) >= 4  # the phantom plus the nibabel series


def test_synthesize_offline_is_deterministic(tmp_path):
    files = write_phantom_series(tmp_path / "in", seed=962, n_slices=3, size=384)  # the model's domain: 1 mm, 384
    uids = []
    for out in ("out1", "out2"):
        r = _run("synthesize", str(tmp_path / "in"), "--task", "auto", "--out", str(tmp_path / out))
        assert r.returncode == 0, r.stderr
        (rec,) = [json.loads(line) for line in r.stdout.splitlines()]
        assert rec["status"] == "done" and rec["task"] == "dce_phase1"
        written = sorted(Path(rec["out_dir"]).rglob("*.dcm"))
        assert len(written) == len(files)
        uids.append(sorted(dcmread(f).SOPInstanceUID for f in written))
    assert uids[0] == uids[1]


def test_synthesize_rejects_an_unknown_task(tmp_path):
    write_phantom_series(tmp_path / "in", seed=963, n_slices=1, size=64)
    r = _run("synthesize", str(tmp_path / "in"), "--task", "nope", "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "dce_phase1" in r.stderr


def test_write_outputs_puts_each_series_in_place_whole(tmp_path):
    """Written beside the output folder and renamed in: nothing partial is left inside it,
    and writing the same series again (a task run twice) gives the same files."""
    from dicom_synth.pipeline import write_outputs
    from tests.test_derived import breast_t1, build, ramp

    sources = breast_t1(3, 8)
    series = [build(sources, ramp(3, 8), label="T1"), build(sources, ramp(3, 8), label="T2")]
    out = tmp_path / "output"
    uids = write_outputs(series, out)
    assert uids == [s[0].SeriesInstanceUID for s in series]
    first = sorted(p.relative_to(out) for p in out.rglob("*.dcm"))
    assert len(first) == 6 and {p.parts[0] for p in first} == {"00", "01"}
    assert write_outputs(series, out) == uids
    assert sorted(p.relative_to(out) for p in out.rglob("*.dcm")) == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["output"]  # no partial folder left
