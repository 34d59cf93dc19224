"""`python -m models retrain brain_contrasts EXPORT --out MODELS`: from a hospital-like PACS
export (phantom brain studies with Siemens-like headers, PACS file names, nested folders,
unrelated series mixed in: a breast study, a CT in a brain study, a synthetic series, a
text file) to a model the service serves through SYNTH_MODELS_DIR, with a card that lists
the data and the metrics. A study whose FLAIR has another frame of reference is refused
with the reason; a T2 acquired rotated in-plane, on a coarser matrix and other slice
positions is resampled onto the study's grid, checked against a known point."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread

pytest.importorskip("torch")

from dicom_synth.series import load_series  # noqa: E402
from models.__main__ import main  # noqa: E402
from models.brain.pairs import Grid, build_studies  # noqa: E402
from models.brain.phantom import CONTRASTS, BrainSubject, generate_subject  # noqa: E402
from models.brain.phantom_dicom import brain_headers, to_stored  # noqa: E402
from models.common.phantom_dicom import uid, write_series  # noqa: E402
from models.ct.phantom_dicom import write_ct_series  # noqa: E402
from models.dce.phantom_dicom import write_phantom_study  # noqa: E402
from tests.stack import start_stack  # noqa: E402
from tests.test_retrain import _hospital_names  # noqa: E402

SIZE, SLICES = 32, 4
FOLDER = {"t1": "S0003", "t2": "S0004", "flair": "S0005", "t1c": "S0007"}


def rotated(subject: BrainSubject, contrast: str, study_uid: str, patient_id: str,
            pixels: np.ndarray | None = None) -> tuple[list, np.ndarray]:
    """Headers and stored pixels of one contrast acquired with the phase and read directions
    swapped: the image turned 90° (rows along -x, columns along +y), as a scanner writes it."""
    headers = brain_headers(subject, contrast, study_uid=study_uid, patient_id=patient_id)
    n = subject.images[contrast].shape[2]
    px = subject.pixel_spacing_mm
    for ds in headers:
        x0, y0, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImageOrientationPatient = [0, 1, 0, -1, 0, 0]
        ds.ImagePositionPatient = [f"{x0 + (n - 1) * px:.4f}", f"{y0:.4f}", f"{z:.4f}"]
    stored = to_stored(subject.images[contrast]) if pixels is None else pixels
    return headers, np.ascontiguousarray(np.rot90(stored, 1, axes=(1, 2)))  # [i, j] = [j, n-1-i]


def write_study(study: Path, seed: int, pid: str, *, odd_frame: bool = False, rotated_t2: bool = False,
                t2_pixels: np.ndarray | None = None, contrasts: tuple[str, ...] = CONTRASTS,
                flair_z: tuple[float, float] | None = None) -> str:
    """One brain examination under study/S000n/IM00000...; the study UID. `rotated_t2`: the
    T2 turned 90°, 24 x 24 pixels, 5 slices over a longer range; `odd_frame`: the FLAIR
    in another frame of reference; `flair_z`: the FLAIR's slices over another range (mm)."""
    subject = generate_subject(seed, n_slices=SLICES, size=SIZE)
    study_uid = uid("hospital-brain", seed)
    for c in contrasts:
        if c == "t2" and rotated_t2:
            coarse = generate_subject(seed, n_slices=5, size=24, z_range=(-14.0, 64.0))
            headers, pixels = rotated(coarse, c, study_uid, pid, t2_pixels)
        else:
            own = generate_subject(seed, n_slices=SLICES, size=SIZE, z_range=flair_z) \
                if c == "flair" and flair_z else subject
            headers = brain_headers(own, c, study_uid=study_uid, patient_id=pid)
            pixels = to_stored(own.images[c])
        if c == "flair" and odd_frame:
            for ds in headers:
                ds.FrameOfReferenceUID = uid("another-frame", seed)
        files = write_series(study / "tmp", headers, pixels, c)
        _hospital_names(files, study / FOLDER[c])
    return study_uid


def write_synthetic_t2(study: Path, seed: int, pid: str) -> None:
    """A series our service made earlier (SyntheticData YES): never training data."""
    subject = generate_subject(seed, n_slices=SLICES, size=SIZE)
    headers = brain_headers(subject, "t2", study_uid=uid("hospital-brain", seed), patient_id=pid)
    for k, ds in enumerate(headers):
        ds.SeriesInstanceUID, ds.SOPInstanceUID = uid("synthetic", seed), uid("synthetic", seed, k)
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SyntheticData, ds.ImageType = "YES", ["DERIVED", "SECONDARY"]
        ds.SeriesDescription, ds.SeriesNumber = "SYNTHETIC T2 (dicom-synth)", 1004
    _hospital_names(write_series(study / "tmp", headers, to_stored(subject.images["t2"]), "syn"), study / "S1004")


def write_export(root: Path, patients: int, **study_options) -> dict[str, str]:
    """PATIENT/DATE folders, one brain study each (the third with a rotated coarse T2); an
    extra patient whose FLAIR is in another frame of reference; a breast study, a CT series
    and a synthetic T2 in the first patient's folder; a text file. {pid: study UID}."""
    uids = {}
    for i in range(patients):
        pid = f"HOSP{i:03d}"
        study = root / f"Patient_{pid}" / f"2024-05-{i + 1:02d} MRT SCHAEDEL"
        uids[pid] = write_study(study, 55000 + i, pid, rotated_t2=i == 2, **study_options)
        if i == 0 and not study_options:
            write_synthetic_t2(study, 55000, pid)
            ct = write_ct_series(study / "tmp", 957, n_slices=2, size=32, region="head_neck",
                                 study_uid=uids[pid], patient_id=pid)
            _hospital_names(ct, study / "S0201")
            breast = write_phantom_study(root / f"Patient_{pid}" / "2023-11-02 MR MAMMA" / "tmp", 3100, n_slices=2,
                                         size=32, patient_id=pid)
            _hospital_names(breast["t1"], root / f"Patient_{pid}" / "2023-11-02 MR MAMMA" / "S0005")
            for f in breast["dce1"]:
                f.unlink()
            breast["dce1"][0].parent.rmdir()
            (root / f"Patient_{pid}" / "2023-11-02 MR MAMMA" / "tmp").rmdir()
    if not study_options:
        uids["ODD"] = write_study(root / "Patient_ODD" / "2024-06-01", 55090, "ODD", odd_frame=True)
    (root / "README.txt").write_text("exported by the PACS\n")
    return uids


def test_a_rotated_coarser_contrast_lands_on_the_study_grid(tmp_path: Path) -> None:
    """A T2 with its rows along -x, 24 x 24 pixels of 9.6 mm, 5 slices over -14..64 mm, on a
    T1 of 32 x 32 pixels of 7.2 mm, 4 slices over -10..60 mm. A marker at one T2 pixel
    centre (on the T2 slices either side of the T1's second slice) comes out at the T1 pixel
    nearest that patient point; the whole T2 matches the T2 rendered on the T1 grid."""
    marker = np.zeros((5, 24, 24), np.uint16)
    i, j = 5, 17  # row and column in the rotated image
    marker[1:3, j, 23 - i] = 4000  # the upright [row, column] of rotated [i, j]; T2 slices at 5.5 and 25 mm
    for name, pixels in (("marker", marker), ("phantom", None)):
        write_study(tmp_path / name, 55100, "GEO", rotated_t2=True, t2_pixels=pixels)
    results, side = build_studies([tmp_path / "marker"], tmp_path / "out")
    (r,) = results
    assert r.refused is None and r.reference == "t1" and r.resampled == ["t2"] and side == SIZE
    t2_grid = Grid.from_slices(load_series(sorted((tmp_path / "marker" / "S0004").iterdir()), pixels=False).slices)
    point = t2_grid.positions[1] + j * t2_grid.spacing[1] * t2_grid.row_dir + i * t2_grid.spacing[0] * t2_grid.col_dir
    t1 = load_series(sorted((tmp_path / "marker" / "S0003").iterdir()), pixels=False).slices[1]
    ipp = np.array([float(v) for v in t1.ImagePositionPatient])
    iop = np.array([float(v) for v in t1.ImageOrientationPatient])
    ps = float(t1.PixelSpacing[0])
    row, col = np.rint((point - ipp) @ iop[3:] / ps), np.rint((point - ipp) @ iop[:3] / ps)
    images = np.load(r.npz)["images"]
    t2 = images[CONTRASTS.index("t2")]
    assert np.unravel_index(int(np.argmax(t2)), t2.shape) == (1, row, col)
    assert 0.25 * 4000 < t2.max() <= 4000  # trilinear: a share of the marker, nothing invented

    (p,), _ = build_studies([tmp_path / "phantom"], tmp_path / "out2")
    resampled = np.load(p.npz)["images"][CONTRASTS.index("t2")]
    truth = generate_subject(55100, n_slices=SLICES, size=SIZE).images["t2"]
    upright = np.rot90(resampled, -1, axes=(1, 2))  # what reading the T2 without its orientation would give
    r_right, r_wrong = (np.corrcoef(v.ravel(), truth.ravel())[0, 1] for v in (resampled, upright))
    assert r_right > 0.9 and 1 - r_right < 0.5 * (1 - r_wrong)  # measured: 0.966 and 0.852


def test_a_contrast_over_other_slices_is_refused_with_the_coverage(tmp_path: Path) -> None:
    write_study(tmp_path / "study", 55101, "COV", flair_z=(30.0, 100.0))  # the T1 over -10..60 mm
    (r,), _ = build_studies([tmp_path], None)
    assert r.refused == "coverage does not match: FLAIR covers 50% of the T1 grid (< 90%)"
    assert r.coverage["flair"] == 0.5 and r.coverage["t2"] == 1.0


def _synthesize(stack, files: list[Path]) -> tuple[dict, list]:
    r = stack.post(files)
    assert r.status_code == 202, r.text
    job = stack.wait_job(r.json()["job_id"])
    assert job["status"] == "done", job
    with stack.client() as c:
        z = zipfile.ZipFile(io.BytesIO(c.get(f"/jobs/{job['job_id']}/result").content))
    return job, [dcmread(io.BytesIO(z.read(n))) for n in z.namelist()]


@pytest.mark.slow
def test_retrain_brain_from_a_hospital_export_is_served(tmp_path: Path, capsys, redis_server) -> None:
    export = tmp_path / "export"
    uids = write_export(export, patients=6)
    out = tmp_path / "my-models"
    assert main(["retrain", "brain_contrasts", str(export), "--out", str(out), "--config", "tiny"]) == 0
    printed = capsys.readouterr().out
    assert f"SYNTH_MODELS_DIR={out.resolve()}" in printed
    assert f"{uids['ODD']}: refused: different FrameOfReferenceUID" in printed
    card = json.loads((out / "brain_contrasts.card.json").read_text())
    data = card["training_data"]
    assert data["studies_found"] == 8 and data["studies_paired"] == 6  # + the breast study, + the odd frame
    why = {r["study"]: r["why"] for r in data["refused"]}
    assert why[uids["ODD"]].startswith("different FrameOfReferenceUID: FLAIR")
    assert "no brain MR series" in next(w for s, w in why.items() if s != uids["ODD"])
    assert data["patients"] == {"train": 2, "val": 2, "test": 2} and data["grid"]["matrix"] == [SIZE, SIZE]
    by_study = {s["study"]: s for s in data["series"]}
    assert by_study[uids["HOSP002"]]["resampled"] == ["t2"] and data["resampled_studies"] == 1
    assert by_study[uids["HOSP000"]]["series"]["t2"] == "t2_tse_tra"  # not the synthetic T2 beside it
    assert all(set(s["series"]) == set(CONTRASTS) for s in data["series"])
    assert {s["split"] for s in data["series"]} == {"train", "val", "test"}
    metrics = card["metrics"]
    assert set(metrics["table"]) == {"model", "identity", "histmatch"} and metrics["n_series"] == 2
    assert len(metrics["directions"]) == 12 and 0 <= metrics["table"]["model"]["body"]["ssim"][0] <= 1
    assert card["training_history"]["steps"] and card["build"]["command"].startswith(
        "python -m models retrain brain_contrasts")
    assert card["domain"]["features"]["threshold"] > 0
    assert (out / "brain_contrasts.retrain" / "studies.json").is_file()

    # the service serves it: a T1 of a held-out patient becomes T2, T1c and FLAIR made by this model
    held_out = next(s["study"] for s in data["series"] if s["split"] == "test")
    pid = next(p for p, u in uids.items() if u == held_out)
    t1 = sorted((export / f"Patient_{pid}").glob("*/S0003/*"))
    # fewer than 10 studies: the tiny model's domain block is the phantom's; the guard is not under test
    stack = start_stack(tmp_path / "svc", broker_url=redis_server.url,
                        env={"SYNTH_MODELS_DIR": str(out), "SYNTH_DOMAIN_GUARD": "warn"})
    try:
        job, outs = _synthesize(stack, t1)
    finally:
        stack.stop()
    assert job["task"] == "brain_contrasts" and job["series_class"] == "brain_t1"
    assert len(job["output_series_uids"]) == 3 and len(outs) == 3 * len(t1)
    assert all(f"sha256 {card['sha256'][:12]}" in ds.DerivationDescription for ds in outs)
    assert {ds.StudyInstanceUID for ds in outs} == {held_out}


@pytest.mark.parametrize(("patients", "options", "says"), [
    (3, {"contrasts": ("t1", "t2")}, ["nothing pairable", "no T1c, FLAIR series in the study"]),
    (2, {}, ["too few patients", "at least 3 are needed"]),
])
def test_not_enough_data_says_what_is_missing_and_writes_no_model(tmp_path: Path, capsys, patients, options,
                                                                 says) -> None:
    export = tmp_path / "export"
    for i in range(patients):
        write_study(export / f"P{i}" / "study", 55200 + i, f"FEW{i}", **options)
    out = tmp_path / "my-models"
    assert main(["retrain", "brain_contrasts", str(export), "--out", str(out), "--config", "tiny"]) == 2
    err = capsys.readouterr().err
    assert all(s in err for s in says), err
    assert not out.exists() or not list(out.iterdir())
