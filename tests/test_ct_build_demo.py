"""The pseudo-MRI demo build end to end on the tiny config: train, warm restart, export
with parity, evaluation through the registry, and a card that records the chain."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from dicom_synth.registry import load_card
from models.ct import build_demo

torch.set_num_threads(1)


def test_build_with_a_warm_restart_writes_a_loadable_card(tmp_path: Path) -> None:
    card = build_demo.build(tmp_path / "w", tmp_path / "run", config="tiny", n_test=1, restart_to=(5,))
    assert card["training_history"]["steps"][-1]["step"] == 5
    assert card["build"]["command"].endswith("--config tiny --steps 3 --restart-to 5")
    assert card["export_parity_max_abs"] < 1e-4
    assert "truth_mri" in card["metrics"]["structure_dice"]
    assert load_card("pseudo_mri", tmp_path / "w").sha256 == card["sha256"]
    assert "Organ Dice" in (tmp_path / "run" / "table.md").read_text()
    json.dumps(card)


def test_build_with_a_restart_that_switches_a_term_on_then_a_fine_tuning_stage(tmp_path: Path, monkeypatch) -> None:
    tiny = build_demo.CONFIGS["tiny"]
    stage = dataclasses.replace(tiny, name="tiny_blur", net=dataclasses.replace(tiny.net, input_blur=1.0), steps=2)
    monkeypatch.setitem(build_demo.CONFIGS, "tiny_blur", stage)
    card = build_demo.build(tmp_path / "w", tmp_path / "run", config="tiny", n_test=1,
                            restart_to=("5:lambda_ngf=2",), then=("tiny_blur",))
    assert card["build"]["command"].endswith("--config tiny --steps 3 --restart-to 5:lambda_ngf=2 --then tiny_blur")
    hist = card["training_history"]
    assert hist["init_from"]["step"] == 5 and hist["init_from"]["config"] == "tiny"
    first = torch.load(tmp_path / "run" / "latest.pt", weights_only=False)
    assert first["config"]["lambda_ngf"] == 2.0 and first["step"] == 5
    # times add up over the chain: the stage's total includes the run it started from
    assert card["build"]["train_seconds"] >= first["history"]["train_seconds"]
    assert "Gaussian blur" in card["architecture"]


def test_restart_spec_parses_and_prints_back() -> None:
    from models.chain import Restart

    r = Restart.parse("9000:lambda_ngf=20,lambda_edge=0.5")
    assert r == Restart(9000, (("lambda_ngf", 20), ("lambda_edge", 0.5)))
    assert str(r) == "9000:lambda_ngf=20,lambda_edge=0.5"
    assert Restart.parse(6000) == Restart(6000) and str(Restart.parse("6000")) == "6000"
    with pytest.raises(ValueError, match="key=value"):
        Restart.parse("9000:lambda_ngf")


def test_chain_command_rebuilds_the_same_chain() -> None:
    from models.brain.train import CONFIGS as BRAIN_CONFIGS
    from models.chain import chain_command

    assert chain_command("m", "small_paired", BRAIN_CONFIGS, None, (4500,)).endswith(
        "--config small_paired --steps 3000 --restart-to 4500")
    assert chain_command("m", "small_paired", BRAIN_CONFIGS, 100, ()).endswith("--steps 100 --restart-to")
