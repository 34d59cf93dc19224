"""`python -m models retrain TASK EXPORT --out MODELS`: from a hospital-like PACS export
(phantom studies with vendor-like headers, any names and nesting, unrelated series and
files mixed in) to an installed model with a card that lists the data and the metrics;
nothing pairable, or too few patients, ends with what is missing and writes no model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from dicom_synth.inference import SynthesisModel  # noqa: E402
from dicom_synth.registry import load_card  # noqa: E402
from dicom_synth.series import group_series, load_series  # noqa: E402
from models.__main__ import main  # noqa: E402
from models.brain.phantom_dicom import write_brain_series  # noqa: E402
from models.dce.phantom_dicom import write_phantom_study  # noqa: E402

SIZE, SLICES = 64, 4


def _hospital_names(files: list[Path], folder: Path) -> None:
    """PACS-export file names: no extension, numbered, in a folder of their own."""
    folder.mkdir(parents=True, exist_ok=True)
    for k, f in enumerate(files):
        f.rename(folder / f"IM{k:05d}")
    files[0].parent.rmdir()


def write_export(root: Path, patients: int, *, with_dce: bool = True) -> Path:
    """One breast MR study per patient under PATIENT/DATE/SERIES-number folders, a brain
    series in the first study, a lone T1 study of an extra patient (unpairable), a text file."""
    for i in range(patients):
        seed, pid = 3100 + i, f"HOSP{i:03d}"
        study = root / f"Patient_{pid}" / f"2024-03-{i + 1:02d} MR MAMMA"
        written = write_phantom_study(study / "tmp", seed, n_slices=SLICES, size=SIZE, patient_id=pid)
        _hospital_names(written["t1"], study / "S0005")
        if with_dce:
            _hospital_names(written["dce1"], study / "S0008")
        else:
            for f in written["dce1"]:
                f.unlink()
            written["dce1"][0].parent.rmdir()
        (study / "tmp").rmdir()
        if i == 0:
            brain = write_brain_series(study / "brain_tmp", 53000, n_slices=SLICES, size=SIZE, contrast="t2")
            _hospital_names(brain, study / "S0099")
    lone = write_phantom_study(root / "extra" / "tmp", 3190, n_slices=SLICES, size=SIZE, patient_id="LONE")
    _hospital_names(lone["t1"], root / "extra" / "S0002")
    for f in lone["dce1"]:
        f.unlink()
    lone["dce1"][0].parent.rmdir()
    (root / "extra" / "tmp").rmdir()
    (root / "README.txt").write_text("exported by the PACS\n")
    return root


def test_retrain_dce_from_a_hospital_export_installs_a_servable_model(tmp_path: Path, capsys) -> None:
    export = write_export(tmp_path / "export", patients=6)
    out = tmp_path / "my-models"
    assert main(["retrain", "dce_phase1", str(export), "--out", str(out), "--config", "tiny"]) == 0
    assert f"SYNTH_MODELS_DIR={out.resolve()}" in capsys.readouterr().out
    card = json.loads((out / "dce_phase1.card.json").read_text())
    data = card["training_data"]
    assert data["studies_found"] == 8 and data["studies_paired"] == 6  # + the brain study, + the lone T1
    assert sorted(r["why"] for r in data["refused"]) == ["no non-contrast, non-fat-suppressed T1 series in the study",
                                                         "no post-contrast (DCE) series in the study"]
    assert data["patients"] == {"train": 2, "val": 2, "test": 2}
    assert {s["split"] for s in data["series"]} == {"train", "val", "test"}
    assert all(s["input"] and s["target"] and s["input"] != s["target"] for s in data["series"])
    table = card["metrics"]["table"]
    assert set(table) == {"model", "identity", "linear"} and set(table["model"]) == {"unit", "body"}
    assert card["metrics"]["n_series"] == 2 and 0 <= table["model"]["unit"]["ssim"][0] <= 1
    assert card["training_history"]["steps"] and card["training_history"]["peak_rss_mb"] > 0
    assert card["build"]["command"].startswith("python -m models retrain dce_phase1")
    assert card["domain"]["features"]["threshold"] > 0  # the domain guard's block, built automatically
    # the registry accepts it (sha256 of the file with its `features` output) and it runs
    model = SynthesisModel.from_card(load_card("dce_phase1", out))
    (t1,) = [g for g in group_series([export]) if g.files[0].parent.name == "S0005"][:1]
    (syn,) = model.run(load_series(t1.files, pixels=True).volume)
    assert syn.pixels.shape == (SLICES, SIZE, SIZE) and np.isfinite(syn.pixels).all()


def test_nothing_pairable_says_what_is_missing_and_writes_no_model(tmp_path: Path, capsys) -> None:
    export = write_export(tmp_path / "export", patients=3, with_dce=False)
    out = tmp_path / "my-models"
    assert main(["retrain", "dce_phase1", str(export), "--out", str(out), "--config", "tiny"]) == 2
    err = capsys.readouterr().err
    assert "nothing pairable" in err and "no post-contrast (DCE) series" in err
    assert not list(out.glob("*.onnx")) and not list(out.glob("*.card.json"))


def test_too_few_patients_says_how_many_are_needed(tmp_path: Path, capsys) -> None:
    export = write_export(tmp_path / "export", patients=2)
    out = tmp_path / "my-models"
    assert main(["retrain", "dce_phase1", str(export), "--out", str(out), "--config", "tiny"]) == 2
    assert "at least 3 are needed" in capsys.readouterr().err
    assert not out.exists() or not list(out.iterdir())
