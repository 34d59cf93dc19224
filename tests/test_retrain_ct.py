"""`python -m models retrain pseudo_mri EXPORT --out MODELS`: from a hospital-like PACS export
(phantom planning CTs with Siemens-like headers and T2 MRs of the same patients registered
to them, PACS file names, nested folders, unrelated series mixed in: a breast study, a brain
FLAIR, a head-and-neck CT with no MR of its region, a text file) to a model the service
serves through SYNTH_MODELS_DIR, with a card that lists the data and the metrics; no MR of
the CT's region, or no registered MR for the held-out patients, says what is missing and
writes no model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydicom import dcmread

pytest.importorskip("torch")

from models.__main__ import main  # noqa: E402
from models.brain.phantom_dicom import write_brain_series  # noqa: E402
from models.common.phantom_dicom import uid  # noqa: E402
from models.ct.phantom import generate_subject  # noqa: E402
from models.ct.phantom_dicom import write_ct_series, write_mr_series  # noqa: E402
from models.dce.phantom_dicom import write_phantom_study  # noqa: E402
from tests.stack import start_stack  # noqa: E402
from tests.test_retrain import _hospital_names  # noqa: E402
from tests.test_retrain_brain import _synthesize  # noqa: E402

SIZE, SLICES = 32, 4


def write_patient(root: Path, i: int, *, registered: bool = True, with_mr: bool = True,
                  region: str = "abdomen") -> str:
    """PATIENT/DATE CT/S0002 (the planning CT) and PATIENT/DATE MR/S0004 (its T2 MR, in the CT's
    frame of reference when `registered`); the patient ID."""
    seed, pid = 41100 + i, f"RT{i:03d}"
    subject = generate_subject(seed, region, n_slices=SLICES, size=SIZE)
    study = uid("hospital-ct", seed)
    ct = write_ct_series(root / pid / "tmp", seed, region=region, subject=subject, study_uid=study, patient_id=pid)
    _hospital_names(ct, root / pid / f"2024-02-{i + 1:02d} CT RT" / "S0002")
    if with_mr:
        frame = uid("ct-frame", study) if registered else None  # the CT writer's frame of reference
        mr = write_mr_series(root / pid / "tmp", subject, patient_id=pid, frame_uid=frame,
                             study_uid=uid("hospital-mr", seed))
        _hospital_names(mr, root / pid / f"2024-02-{i + 2:02d} MRT" / "S0004")
    return pid


def write_export(root: Path, patients: int, **options) -> list[str]:
    pids = [write_patient(root, i, **options) for i in range(patients)]
    extra = root / "misc"
    breast = write_phantom_study(extra / "tmp", 3100, n_slices=2, size=SIZE, patient_id="MAMMA1")
    _hospital_names(breast["t1"], extra / "mamma" / "S0005")
    for f in breast["dce1"]:
        f.unlink()
    breast["dce1"][0].parent.rmdir()
    (extra / "tmp").rmdir()
    _hospital_names(write_brain_series(extra / "tmp", 53000, n_slices=2, size=SIZE, contrast="flair"),
                    extra / "brain" / "S0005")
    _hospital_names(write_ct_series(extra / "tmp", 41190, n_slices=2, size=SIZE, region="head_neck",
                                    patient_id="HN1"), extra / "hn" / "S0002")
    (root / "README.txt").write_text("exported by the PACS\n")
    return pids


@pytest.mark.slow
def test_retrain_pseudo_mri_from_a_hospital_export_is_served(tmp_path: Path, capsys, redis_server) -> None:
    export = tmp_path / "export"
    write_export(export, patients=6)
    out = tmp_path / "my-models"
    assert main(["retrain", "pseudo_mri", str(export), "--out", str(out), "--config", "tiny"]) == 0
    assert f"SYNTH_MODELS_DIR={out.resolve()}" in capsys.readouterr().out
    card = json.loads((out / "pseudo_mri.card.json").read_text())
    data = card["training_data"]
    assert data["regions"] == ["abdomen"] and data["series_found"] == 15  # 6 CT + 6 MR + 3 unrelated
    assert data["patients"] == {"train": 2, "val": 2, "test": 2}
    assert data["ct_series"] == data["mr_series"] == {"train": 2, "val": 2, "test": 2}
    assert data["registered_pairs"] == {"val": 2, "test": 2} and data["matrix"] == [SIZE, SIZE]
    why = {r["modality"] + " " + r["why"].split(" (")[0] for r in data["not_used"]}
    assert "MR not a T2-weighted MR without fat suppression" in why  # the brain FLAIR; the breast T1 too
    assert any(r["why"].endswith("no MR of head_neck") for r in data["not_used"]), data["not_used"]
    assert {(s["modality"], s["description"]) for s in data["series"]} == {("CT", "Abdomen 3.0 Br40"),
                                                                         ("MR", "t2_tse_tra_abd")}
    metrics = card["metrics"]
    assert set(metrics["table"]) == {"model", "hu_map", "hu_map_filtered"} and metrics["n_series"] == 2
    assert set(metrics["table"]["model"]) == {"unit", "body"} and 0 <= metrics["table"]["model"]["body"]["ssim"][0] <= 1
    assert isinstance(metrics["shortfalls"], list)
    assert card["training_history"]["steps"]
    assert card["build"]["command"].startswith("python -m models retrain pseudo_mri")
    assert card["training"]["regions"] == ["abdomen"] and card["post_filter"]
    assert card["domain"]["features"]["threshold"] > 0
    assert (out / "pseudo_mri.retrain" / "metrics.json").is_file()

    # the service serves it: a held-out patient's CT becomes a pseudo-MRI made by this model
    test_pid = next(s for s in data["series"] if s["split"] == "test" and s["modality"] == "CT")
    ct = next(p for p in (export).glob("*/*CT RT/S0002") if any(
        dcmread(f, stop_before_pixels=True).SeriesInstanceUID == test_pid["series"] for f in p.iterdir()))
    files = sorted(ct.iterdir())
    stack = start_stack(tmp_path / "svc", broker_url=redis_server.url,
                        env={"SYNTH_MODELS_DIR": str(out), "SYNTH_DOMAIN_GUARD": "warn"})
    try:
        job, outs = _synthesize(stack, files)
    finally:
        stack.stop()
    assert job["task"] == "pseudo_mri" and job["series_class"] == "ct_abdomen_pelvis"
    assert len(outs) == len(files) and all(ds.Modality == "MR" for ds in outs)
    assert all(f"sha256 {card['sha256'][:12]}" in ds.DerivationDescription for ds in outs)


@pytest.mark.parametrize(("options", "says"), [
    ({"with_mr": False}, ["CT of abdomen found, but no T2-weighted MR series of that region"]),
    ({"registered": False}, ["has an MR registered to its CT", "FrameOfReferenceUID"]),
])
def test_not_enough_data_says_what_is_missing_and_writes_no_model(tmp_path: Path, capsys, options, says) -> None:
    export = tmp_path / "export"
    for i in range(4):
        write_patient(export, i, **options)
    out = tmp_path / "my-models"
    assert main(["retrain", "pseudo_mri", str(export), "--out", str(out), "--config", "tiny"]) == 2
    err = capsys.readouterr().err
    assert all(s in err for s in says), err
    assert not out.exists() or not list(out.iterdir())


def test_too_few_patients_says_how_many_are_needed(tmp_path: Path, capsys) -> None:
    export = tmp_path / "export"
    for i in range(2):
        write_patient(export, i)
    out = tmp_path / "my-models"
    assert main(["retrain", "pseudo_mri", str(export), "--out", str(out), "--config", "tiny"]) == 2
    assert "at least 3 are needed" in capsys.readouterr().err
    assert not out.exists() or not list(out.iterdir())
