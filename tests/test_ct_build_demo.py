"""The pseudo-MRI demo build end to end on the tiny config: train, warm restart, export
with parity, evaluation through the registry, and a card that records the chain."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dicom_synth.registry import load_card
from models.chain import Stage
from models.ct import build_demo

torch.set_num_threads(1)


def test_build_with_a_warm_restart_writes_a_loadable_card(tmp_path: Path) -> None:
    card = build_demo.build(tmp_path / "w", tmp_path / "run", config="tiny", n_test=1,
                            stages=(Stage.of("restart", restart=True, steps=5),))
    assert card["training_history"]["steps"][-1]["step"] == 5
    assert card["build"]["command"].endswith("--config tiny")
    assert card["build"]["recipe"]["stages"] == [{"name": "restart", "start": "warm restart", "options": {"steps": 5}}]
    assert card["export_parity_max_abs"] < 1e-4
    assert "truth_mri" in card["metrics"]["structure_dice"]
    assert load_card("pseudo_mri", tmp_path / "w").sha256 == card["sha256"]
    table = (tmp_path / "run" / "table.md").read_text()
    assert "Organ Dice" in table
    # the demo's CT-guided filter is in the graph, on the card, and the HU map gets it as a reference
    assert card["post_filter"] == {"kind": "joint_bilateral", "guide": "the network's input (normalised)",
                                   "radius": 3, "sigma_px": 2.0, "sigma_range": 0.1}
    assert "joint bilateral filter guided by the CT (7x7" in card["architecture"]
    assert "a boundary the CT does not show" in card["limitations"]
    assert "hu_map_filtered" in card["metrics"]["table"] and "| hu_map_filtered |" in table
    json.dumps(card)


def test_build_without_the_post_filter_says_so_in_its_command(tmp_path: Path) -> None:
    card = build_demo.build(tmp_path / "w", tmp_path / "run", config="tiny", n_test=1, post_filter=None)
    assert card["build"]["command"].endswith("--config tiny --no-post-filter")
    assert card["build"]["recipe"]["stages"] == []  # the recipe's stages follow its own config only
    assert "post_filter" not in card and "bilateral" not in card["architecture"]
    assert "hu_map_filtered" not in card["metrics"]["table"]


def test_post_filter_arguments() -> None:
    import argparse

    from models.guided_filter import GuidedFilter, add_post_filter_argument, post_filter_from

    p = argparse.ArgumentParser()
    add_post_filter_argument(p, build_demo.DEMO_POST_FILTER)
    assert post_filter_from(p.parse_args([]).post_filter) == build_demo.DEMO_POST_FILTER
    assert post_filter_from(p.parse_args(["--no-post-filter"]).post_filter) is None
    custom = p.parse_args(["--post-filter", "2", "1.5", "0.05"]).post_filter
    assert post_filter_from(custom) == GuidedFilter(2, 1.5, 0.05)
    with pytest.raises(ValueError, match="whole number"):
        post_filter_from([2.5, 1.0, 0.1])
    with pytest.raises(ValueError, match="positive sigmas"):
        GuidedFilter(2, 1.0, 0.0)


def test_build_with_a_restart_that_switches_a_term_on_then_a_fine_tuning_stage(tmp_path: Path) -> None:
    stages = (Stage.of("restart", restart=True, steps=5, lambda_ngf=2.0),
              Stage.of("skip", steps=2, **{"net.long_skip": True}))
    card = build_demo.build(tmp_path / "w", tmp_path / "run", config="tiny", n_test=1, stages=stages)
    assert card["build"]["recipe"]["stages"][1] == {"name": "skip", "start": "from the last weights",
                                                   "options": {"steps": 2, "net.long_skip": True}}
    hist = card["training_history"]
    assert hist["init_from"]["step"] == 5 and hist["init_from"]["config"] == "tiny"
    assert (tmp_path / "run" / "stage1_skip" / "latest.pt").exists()
    first = torch.load(tmp_path / "run" / "latest.pt", weights_only=False)
    assert first["config"]["lambda_ngf"] == 2.0 and first["step"] == 5
    # times add up over the chain: the stage's total includes the run it started from
    assert card["build"]["train_seconds"] >= first["history"]["train_seconds"]
    assert "full-resolution skip" in card["architecture"]


def test_the_recipes_resolve_to_their_configs_and_the_command_line() -> None:
    from models.brain.recipe import RECIPE as BRAIN
    from models.brain.train import CONFIGS as BRAIN_CONFIGS
    from models.chain import chain_command
    from models.ct.recipe import RECIPE as CT

    brain = BRAIN.resolve(BRAIN_CONFIGS)
    assert [c.steps for c in brain[:3]] == [3000, 4500, 1500] and brain[1].name == "small"
    assert brain[-1].name == "n192_decoded20" and brain[-1].n_train == 192 and brain[-1].net.gate_source
    assert all(c.threads == 1 for c in brain)
    ct = build_demo.RECIPE.resolve(build_demo.CONFIGS)
    assert CT is build_demo.RECIPE and ct[2].lambda_ngf == 20.0 and ct[-1].net.long_skip and ct[-1].n_train == 96
    assert BRAIN.stages_for("tiny") == () and len(BRAIN.stages_for("small", 2)) == 2
    assert chain_command("m", "small", None, None, None) == "python -m m --config small"
    assert chain_command("m", "small", 100, 1, 0).endswith("--config small --steps 100 --threads 1 --stages 0")
