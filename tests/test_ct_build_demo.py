"""The pseudo-MRI demo build end to end on the tiny config: train, warm restart, export
with parity, evaluation through the registry, and a card that records the chain."""

from __future__ import annotations

import json
from pathlib import Path

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


def test_chain_command_rebuilds_the_same_chain() -> None:
    from models.brain.train import CONFIGS as BRAIN_CONFIGS
    from models.chain import chain_command

    assert chain_command("m", "small_paired", BRAIN_CONFIGS, None, (4500,)).endswith(
        "--config small_paired --steps 3000 --restart-to 4500")
    assert chain_command("m", "small_paired", BRAIN_CONFIGS, 100, ()).endswith("--steps 100 --restart-to")
