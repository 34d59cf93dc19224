"""models.common: the subject splits, and the export's feature tensor lookup, which must
find the very tensors `models.domain_reference` names for the committed architectures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from models.common.split import SeedSplits, split_patients

torch = pytest.importorskip("torch")

WEIGHTS = Path(__file__).resolve().parent.parent / "models" / "weights"


def test_seed_splits_name_their_ranges() -> None:
    s = SeedSplits({"train": 1000, "val": 2000, "test": 3000})
    assert s.seeds("val", 3) == [2000, 2001, 2002]
    assert [s.split_of(x) for x in (1000, 2999, 3999, 4000)] == ["train", "val", "test", "other"]
    with pytest.raises(ValueError, match="unknown split"):
        s.seeds("holdout", 1)


def test_patients_split_disjoint_stable_and_refuse_too_few() -> None:
    ids = [f"P{i:03d}" for i in range(10)]
    split = split_patients(ids)
    assert [len(split[k]) for k in ("train", "val", "test")] == [6, 2, 2]
    assert sorted(sum(split.values(), [])) == ids
    assert split_patients(reversed(ids)) == split  # the export's order does not matter
    with pytest.raises(ValueError, match="at least 3 are needed"):
        split_patients(["a", "b"])


def _post_filter(card: dict):
    from models.guided_filter import GuidedFilter

    spec = card.get("post_filter")
    if not spec:
        return None
    return GuidedFilter(radius=spec["radius"], sigma_px=spec["sigma_px"], sigma_range=spec["sigma_range"])


def test_feature_tensor_finds_the_committed_models_encoder_tensors(tmp_path: Path) -> None:
    from models.brain import export as brain
    from models.brain.networks import BrainNetConfig, ConditionalTranslator
    from models.common.export import feature_tensor
    from models.common.layers import with_post_filter
    from models.ct import export as ct
    from models.ct.networks import CycleNetConfig, ResnetGenerator
    from models.dce import export as dce
    from models.dce.networks import NetConfig, UnetGenerator
    from models.domain_reference import FEATURE_TENSORS

    def card(task: str) -> dict:
        return json.loads((WEIGHTS / f"{task}.card.json").read_text())

    c = card("dce_phase1")
    g = UnetGenerator(NetConfig(**c["net"]))
    path = dce.export_onnx(g, tmp_path / "dce.onnx")
    assert feature_tensor(path, g, dce.feature_module(g)) == FEATURE_TENSORS["dce_phase1"]
    c = card("pseudo_mri")
    g = with_post_filter(ResnetGenerator(CycleNetConfig.from_dict(c["net"])), _post_filter(c))
    path = ct.export_onnx(g, tmp_path / "ct.onnx")
    assert feature_tensor(path, g, ct.feature_module(g)) == FEATURE_TENSORS["pseudo_mri"]
    c = card("brain_contrasts")
    t = with_post_filter(ConditionalTranslator(BrainNetConfig(**c["net"])), _post_filter(c))
    path = brain.export_onnx(t, tmp_path / "brain.onnx", 4)
    assert feature_tensor(path, t, brain.feature_module(t)) == FEATURE_TENSORS["brain_contrasts"]
