"""The brain demo build on the tiny config: train, export with parity, evaluation through
the registry, a card that records the chain; the demo's gate bias is the demo config's only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dicom_synth.registry import load_card
from models.brain import build_demo

torch.set_num_threads(1)


def test_tiny_build_writes_a_loadable_card_without_the_demo_gate_bias(tmp_path: Path) -> None:
    card = build_demo.build(tmp_path / "w", tmp_path / "run", config="tiny", n_test=1)
    assert card["build"]["command"].endswith("--config tiny")
    assert card["build"]["recipe"]["export"]["gate_bias"] == [["t1", "t1c", 5.5]]
    assert card["export_parity_max_abs"] < 1e-4
    assert "gate_bias" not in card and card["post_filter"]["radius"] == 2
    assert load_card("brain_contrasts", tmp_path / "w").sha256 == card["sha256"]
    assert "t1->t1c" in card["metrics"]["directions"]
    json.dumps(card)


def test_a_gate_bias_needs_a_gate_that_knows_the_source(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="gate_source"):
        build_demo.build(tmp_path / "w", tmp_path / "run", config="tiny", n_test=1, gate_bias=(("t1", "t1c", 1.0),))


def test_gate_bias_flags_parse_and_fall_back_to_the_demo_default_only_when_absent() -> None:
    import argparse

    from models.brain.gate_bias import add_pair_bias_argument

    p = argparse.ArgumentParser()
    add_pair_bias_argument(p, build_demo.DEMO_GATE_BIAS, "for the demo config")
    assert p.parse_args([]).gate_bias is None  # build() then picks the demo's, for the demo config only
    assert p.parse_args(["--no-gate-bias"]).gate_bias == []
    assert p.parse_args(["--gate-bias", "t1:t1c=4", "t1c:t1=-1"]).gate_bias == [("t1", "t1c", 4.0), ("t1c", "t1", -1.0)]
    with pytest.raises(SystemExit):
        p.parse_args(["--gate-bias", "t1:t1=4"])
