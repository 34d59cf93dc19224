"""Runtime for pseudo_mri and brain_contrasts (numpy + onnxruntime): each card's
normalisation is applied exactly, odd sizes are padded and cropped back, the brain model
makes one series per missing contrast, labels and errors are clear, and any other card
falls back to SynthesisModel."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn

from dicom_synth import intensity
from dicom_synth.multicontrast import (
    MultiContrastModel,
    PseudoMRIModel,
    enclosed,
    hu_curve,
    hu_window,
    load_synthesis_model,
    normalise,
    signal_void,
)
from dicom_synth.registry import load_card, sha256_file
from models.brain.export import build_card as brain_card
from models.brain.export import export_onnx as brain_export
from models.brain.networks import BrainNetConfig, ConditionalTranslator
from models.brain.phantom import generate_subject as brain_subject
from models.brain.train import CONFIGS as BRAIN_CONFIGS
from models.common.evaluate import body_mask, unit_slices
from models.ct.evaluate import body_mask_ct, fit_baselines, structure_scores
from models.ct.export import build_card as ct_card
from models.ct.export import export_onnx as ct_export
from models.ct.networks import CycleNetConfig, ResnetGenerator
from models.ct.phantom import ORGANS as CT_ORGANS
from models.ct.phantom import L
from models.ct.phantom import generate_subject as ct_subject
from models.ct.train import CONFIGS as CT_CONFIGS

torch.set_num_threads(1)


def _randomise(net: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    for p in net.parameters():
        nn.init.normal_(p, 0, 0.3)
    return net.eval()


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> dict:
    d = tmp_path_factory.mktemp("weights")
    g = _randomise(ResnetGenerator(CycleNetConfig(ngf=4)))
    p = ct_export(g, d / "pseudo_mri.onnx")
    (d / "pseudo_mri.card.json").write_text(json.dumps(ct_card("pseudo_mri", p, CT_CONFIGS["tiny"], version="0.0.1")))
    t = _randomise(ConditionalTranslator(BrainNetConfig(ngf=4, ndf=4, enc_blocks=1, dec_blocks=1)))
    p = brain_export(t, d / "brain_contrasts.onnx", 4)
    (d / "brain_contrasts.card.json").write_text(
        json.dumps(brain_card("brain_contrasts", p, BRAIN_CONFIGS["tiny"], version="0.0.1")))
    return {"dir": d, "g": g, "t": t}


def test_hu_window() -> None:
    v = np.array([-2000, -1000, 0, 1000, 3000], np.float32)
    np.testing.assert_allclose(hu_window(v), [-1, -1, 0, 1, 1])
    with pytest.raises(ValueError):
        hu_window(v, (10, 10))


def test_hu_curve_is_the_cards_piecewise_map_and_refuses_a_bad_curve() -> None:
    v = np.array([-2000, -1000, -100, 45, 100, 5000], np.float32)
    spec = {"kind": "hu_curve", "knots_hu": [-1000, -100, 100, 1500], "values": [-1, -0.7, 0.6, 1]}
    np.testing.assert_allclose(normalise(v, spec), [-1, -1, -0.7, -0.7 + 1.3 * 145 / 200, 0.6, 1], atol=1e-6)
    with pytest.raises(ValueError, match="increasing"):
        hu_curve(v, [0, 0, 10], [0, 1, 2])
    with pytest.raises(ValueError, match="non-decreasing"):
        hu_curve(v, [0, 10], [1, 0])


def test_pseudo_mri_matches_torch_on_odd_sizes(weights: dict) -> None:
    model = load_synthesis_model(load_card("pseudo_mri", weights["dir"]), threads=1, batch_size=2)
    assert isinstance(model, PseudoMRIModel)
    ct = np.random.default_rng(0).uniform(-1100, 1500, (3, 37, 50)).astype(np.float32)
    ct[:, 10:14, 20:25] = -1000.0  # an airway, enclosed by the random "tissue" around it
    seen: list[float] = []
    (out,) = model.run(ct, progress=seen.append)
    assert out.label == "pseudo-MRI (T2-like)" and out.pixels.shape == ct.shape
    assert seen == pytest.approx([2 / 3, 1.0])
    window = tuple(model.card.normalisation["window_hu"])
    x = torch.from_numpy(np.pad(hu_window(ct, window), ((0, 0), (0, 3), (0, 2)), constant_values=-1)[:, None])
    with torch.no_grad():
        ref = weights["g"](x).numpy()[:, 0, :37, :50]
    void = (ct < -500) & enclosed(ct >= -500)
    expected = intensity.to_stored(np.where(void, -1.0, ref), model.card.output_mapping)
    assert np.abs(out.pixels - expected).max() < 1e-4 * 4095 / 2 + 1e-3
    assert (out.pixels[:, 10:14, 20:25] == 0).all()


def test_pseudo_mri_air_inside_the_body_is_a_signal_void_when_the_card_says_so() -> None:
    pred = np.full((1, 9, 9), 0.8, np.float32)
    hu = np.full((1, 9, 9), -1000.0, np.float32)  # air around the body
    hu[0, 1:8, 1:8] = 40.0  # the neck
    hu[0, 3:5, 3:5] = -1000.0  # the trachea
    out = signal_void(pred, hu, {"below_hu": -500, "value": -1.0})
    assert (out[0, 3:5, 3:5] == -1.0).all()
    assert (out[hu > -500] == np.float32(0.8)).all() and out[0, 0, 0] == np.float32(0.8)  # outside: the network's
    assert signal_void(pred, hu, None) is pred  # an older card: untouched


def test_brain_makes_one_series_per_missing_contrast(weights: dict) -> None:
    model = load_synthesis_model(load_card("brain_contrasts", weights["dir"]), threads=1)
    assert isinstance(model, MultiContrastModel)
    vol = np.random.default_rng(1).uniform(0, 3000, (2, 40, 36)).astype(np.float32)
    seen: list[float] = []
    outs = model.run(vol, seen.append, source_label="brain_t1")
    assert [o.label for o in outs] == ["T2", "T1c", "FLAIR"]
    assert seen[-1] == pytest.approx(1.0) and len(seen) == 3
    x = torch.from_numpy(np.pad(intensity.normalise_slices(vol), ((0, 0), (0, 0), (0, 0)))[:, None])
    with torch.no_grad():
        ref = weights["t"](x, torch.tensor([[0, 0, 0, 1.0]] * 2)).numpy()[:, 0]
    np.testing.assert_allclose(outs[2].pixels, intensity.to_stored(ref, model.card.output_mapping), atol=0.5)
    assert [o.label for o in model.run(vol, source_label="flair")] == ["T1", "T2", "T1c"]


def test_brain_feeds_the_source_contrast_when_the_card_names_its_input(tmp_path: Path) -> None:
    net = BrainNetConfig(ngf=4, ndf=4, enc_blocks=1, dec_blocks=1, input_gate=True, gate_source=True)
    t = _randomise(ConditionalTranslator(net))
    with torch.no_grad():
        t.decoder.gate_pair.zero_()
        t.decoder.gate_pair[0, 2] = 30.0  # T1 -> T1c passes the input through
    p = brain_export(t, tmp_path / "brain_contrasts.onnx", 4)
    cfg = dataclasses.replace(BRAIN_CONFIGS["tiny"], net=net)
    (tmp_path / "brain_contrasts.card.json").write_text(
        json.dumps(brain_card("brain_contrasts", p, cfg, version="0.0.1")))
    model = load_synthesis_model(load_card("brain_contrasts", tmp_path), threads=1)
    vol = np.random.default_rng(2).uniform(0, 3000, (2, 40, 36)).astype(np.float32)
    passed = intensity.to_stored(intensity.normalise_slices(vol), model.card.output_mapping)
    t1c_from_t1 = model.run(vol, source_label="brain_t1")[1]
    t1c_from_flair = model.run(vol, source_label="brain_flair")[2]
    assert t1c_from_t1.label == t1c_from_flair.label == "T1c"
    np.testing.assert_allclose(t1c_from_t1.pixels, passed, atol=0.5)
    assert np.abs(t1c_from_flair.pixels.astype(float) - passed).max() > 100


def test_brain_refuses_without_a_known_source(weights: dict) -> None:
    model = load_synthesis_model(load_card("brain_contrasts", weights["dir"]), threads=1)
    vol = np.zeros((1, 16, 16), np.float32)
    with pytest.raises(ValueError, match="source series' label"):
        model.run(vol)
    with pytest.raises(ValueError, match="cannot translate from 'breast_t1_nc'"):
        model.run(vol, source_label="breast_t1_nc")
    with pytest.raises(ValueError, match="NaN"):
        model.run(np.full((1, 8, 8), np.nan, np.float32), source_label="brain_t2")


def test_other_cards_fall_back_to_synthesis_model(tmp_path: Path) -> None:
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["b", 1, "h", "w"])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["b", 1, "h", "w"])
    graph = helper.make_graph([helper.make_node("Identity", ["input"], ["output"])], "id", [x], [y])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, tmp_path / "id.onnx")
    card = {"name": "id", "task": "dce_phase1", "version": "0.0.1", "onnx_file": "id.onnx",
            "sha256": sha256_file(tmp_path / "id.onnx"), "output_label": "DCE phase 1", "input": {},
            "normalisation": {"kind": "per_slice_minmax", "range": [-1.0, 1.0]},
            "output_mapping": intensity.default_output_mapping(), "intended_use": "tests"}
    (tmp_path / "id.card.json").write_text(json.dumps(card))
    model = load_synthesis_model(load_card("dce_phase1", tmp_path), threads=1)
    vol = np.random.default_rng(2).uniform(0, 100, (2, 8, 8)).astype(np.float32)
    (out,) = model.run(vol, source_label="breast_t1_nc")
    assert out.label == "DCE phase 1"
    np.testing.assert_allclose(out.pixels, intensity.to_stored(intensity.normalise_slices(vol),
                                                                card["output_mapping"]), atol=1e-3)


# --- the committed demo models (models/weights): a retrained or corrupted file is caught here
def _unit(out, card) -> np.ndarray:
    return (intensity.from_stored(out.pixels, card.output_mapping) + 1.0) / 2.0


def test_pseudo_mri_demo_beats_the_hu_map_on_a_test_subject() -> None:
    card = load_card("pseudo_mri")
    model = load_synthesis_model(card, threads=1)
    s = ct_subject(43001, "abdomen", n_slices=6, size=128, z_range=(60, 300))
    (out,) = model.run(s.ct, source_label="ct_abdomen_pelvis")
    assert out.pixels.shape == s.ct.shape and out.label == "pseudo-MRI (T2-like)"
    truth = unit_slices(s.mr)
    body = body_mask_ct(s.ct)
    hu_map = fit_baselines(n_subjects=1, n_slices=4)["hu_map"]
    mae_model = float(np.abs(_unit(out, card) - truth)[body].mean())
    mae_map = float(np.abs(unit_slices(hu_map(s.ct)) - truth)[body].mean())
    assert mae_model < mae_map


@pytest.mark.parametrize(("region", "z_range", "floor"), [("abdomen", (60, 300), 0.95), ("head_neck", (20, 230), 0.95)])
def test_pseudo_mri_demo_keeps_the_organs_where_the_ct_draws_them(region: str, z_range: tuple, floor: float) -> None:
    """Organ Dice on a test subject, against the issue's 0.95 (v0.5.0, with the CT-guided
    filter: 0.965 abdomen, 0.978 head-and-neck; v0.4.0 0.953 and 0.943, v0.3.0 0.95 and 0.93,
    v0.2.0 0.92 and 0.86, v0.1.0 0.83 and 0.69)."""
    card = load_card("pseudo_mri")
    s = ct_subject(43001, region, n_slices=8, size=128, z_range=z_range)
    (out,) = load_synthesis_model(card, threads=1).run(s.ct, source_label="ct")
    organs = {n: tuple(L[t] for t in ts) for n, ts in CT_ORGANS[region].items()}
    dice = structure_scores({"model": _unit(out, card)}, s.labels, organs, unit_slices(s.mr), s.organ_fraction)
    assert np.mean(list(dice["model"].values())) > floor, dice


def test_brain_demo_completes_a_t1_study_better_than_the_input_itself() -> None:
    """Body MAE over the four phantom test subjects (the evaluation's criterion). One
    subject alone is too noisy a judge: on 53001 both demo versions' T1->FLAIR sit within
    3 % of the input's own error."""
    card = load_card("brain_contrasts")
    model = load_synthesis_model(card, threads=1)
    errors: dict[str, list[tuple[float, float]]] = {"t2": [], "flair": []}
    for seed in (53000, 53001, 53002, 53003):
        s = brain_subject(seed, n_slices=6, size=128)
        outs = model.run(s.images["t1"], source_label="brain_t1")
        assert [o.label for o in outs] == ["T2", "T1c", "FLAIR"]
        mask = body_mask(s.images["t1"])
        x = unit_slices(s.images["t1"])
        for out, target in ((outs[0], "t2"), (outs[2], "flair")):
            truth = unit_slices(s.images[target])
            errors[target].append((float(np.abs(_unit(out, card) - truth)[mask].mean()),
                                   float(np.abs(x - truth)[mask].mean())))
    for target, pairs in errors.items():
        model_mae, input_mae = np.mean(pairs, axis=0)
        assert model_mae < 0.9 * input_mae, (target, pairs)
    assert all(m < i for m, i in errors["t2"]), errors["t2"]


def test_brain_demo_t1c_from_a_t1_draws_the_tumour_closer_than_the_t1_itself() -> None:
    """Inside the tumour is where a synthetic T1c matters (the whole image can hide it). Model
    vs input MAE there, 3 test subjects with a tumour in these slices (v0.6.0, after its
    validation-chosen T1 -> T1c gate bias: 0.88 of the input's error; v0.5.0 0.94, v0.4.0 0.94;
    a model that copies its input, or only repeats T1 contrast, scores like the input: stages
    whose gate opened over the rim scored 0.96-0.99 and fail, and so does v0.6.0's network
    with a gate bias of 8 or more)."""
    card = load_card("brain_contrasts")
    model = load_synthesis_model(card, threads=1)
    err = np.zeros(2)
    for seed in (53000, 53001, 53002):
        s = brain_subject(seed, n_slices=6, size=128)
        lesion = s.tumour_fraction > 0.5
        outs = model.run(s.images["t1"], source_label="brain_t1")
        truth = unit_slices(s.images["t1c"])
        err += [np.abs(_unit(outs[1], card) - truth)[lesion].sum(),
                np.abs(unit_slices(s.images["t1"]) - truth)[lesion].sum()]
    assert err[0] < 0.95 * err[1], err
