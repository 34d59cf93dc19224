"""Model registry: cards beside ONNX files, sha256 checked, unknown names listed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dicom_synth.intensity import default_output_mapping
from dicom_synth.registry import (
    ModelCard,
    ModelIntegrityError,
    UnknownModelError,
    known_tasks,
    load_card,
    sha256_file,
)


def _card(tmp: Path, name: str, task: str, version: str = "1.0.0", payload: bytes = b"onnx") -> Path:
    onnx = tmp / f"{name}.onnx"
    onnx.write_bytes(payload)
    card = {"name": name, "task": task, "version": version, "onnx_file": onnx.name,
            "sha256": sha256_file(onnx), "input": {"spatial_multiple": 128},
            "normalisation": {"kind": "per_slice_minmax", "range": [-1, 1]},
            "output_mapping": default_output_mapping(), "intended_use": "tests",
            "metrics": {"ssim": 0.5}, "something_new": 1}
    path = tmp / f"{name}.card.json"
    path.write_text(json.dumps(card))
    return path


def test_load_card_by_task_verifies_sha_and_keeps_unknown_fields(tmp_path: Path) -> None:
    _card(tmp_path, "dce_a", "dce_phase1")
    card = load_card("dce_phase1", tmp_path)
    assert isinstance(card, ModelCard)
    assert card.name == "dce_a" and card.onnx_path == tmp_path / "dce_a.onnx"
    assert card.extra == {"something_new": 1}
    assert card.to_dict()["something_new"] == 1
    assert known_tasks(tmp_path) == ["dce_phase1"]


def test_highest_version_wins(tmp_path: Path) -> None:
    _card(tmp_path, "old", "dce_phase1", "0.9.0")
    _card(tmp_path, "new", "dce_phase1", "0.10.0")
    assert load_card("dce_phase1", tmp_path).name == "new"


def test_unknown_task_lists_known_ones(tmp_path: Path) -> None:
    _card(tmp_path, "dce_a", "dce_phase1")
    _card(tmp_path, "ct", "pseudo_mri")
    with pytest.raises(UnknownModelError) as err:
        load_card("brain_contrasts", tmp_path)
    assert isinstance(err.value, KeyError)
    msg = str(err.value)
    assert "brain_contrasts" in msg and "dce_phase1" in msg and "pseudo_mri" in msg
    assert err.value.known == ["dce_phase1", "pseudo_mri"]


def test_tampered_or_missing_onnx_is_refused(tmp_path: Path) -> None:
    _card(tmp_path, "dce_a", "dce_phase1")
    (tmp_path / "dce_a.onnx").write_bytes(b"tampered")
    with pytest.raises(ModelIntegrityError, match="sha256"):
        load_card("dce_phase1", tmp_path)
    (tmp_path / "dce_a.onnx").unlink()
    with pytest.raises(ModelIntegrityError, match="missing"):
        load_card("dce_phase1", tmp_path)


def test_card_lacking_required_fields_is_skipped(tmp_path: Path) -> None:
    (tmp_path / "bad.card.json").write_text(json.dumps({"name": "bad", "task": "dce_phase1"}))
    assert known_tasks(tmp_path) == []
    with pytest.raises(ValueError, match="lacks"):
        ModelCard.from_dict({"name": "bad"})


def test_shipped_dce_model_is_registered_and_intact() -> None:
    card = load_card("dce_phase1")  # default dir: models/weights
    assert card.task == "dce_phase1"
    assert "NOT FOR DIAGNOSIS" in card.intended_use
    assert card.input["spatial_multiple"] == 128
    assert card.normalisation["kind"] == "per_slice_minmax"
    assert card.output_mapping["kind"] == "linear_from_unit"
    assert card.training_data and card.metrics
