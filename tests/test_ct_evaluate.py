"""CT -> pseudo-MRI evaluation: the baselines fit what they should, the structure score
rewards registered images and punishes shifted ones, and a run produces both conventions,
organ Dice and a panel per case."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch import nn

from dicom_synth.multicontrast import load_synthesis_model
from dicom_synth.registry import load_card
from models.common.evaluate import unit_slices
from models.ct import evaluate as ev
from models.ct.export import build_card, export_onnx
from models.ct.networks import CycleNetConfig, ResnetGenerator
from models.ct.phantom import ORGANS, L, generate_subject
from models.ct.train import CONFIGS

torch.set_num_threads(1)


def test_paired_lut_recovers_a_piecewise_map_and_quantile_map_is_monotone() -> None:
    rng = np.random.default_rng(0)
    hu = rng.uniform(-1000, 1500, 20000)
    truth = ev.PiecewiseMap((-1000, -100, 0, 60, 1500), (0.0, 0.9, 1.0, 0.2, 0.05))
    lut = ev.fit_paired_lut(hu, truth(hu))
    grid = np.linspace(-1000, 1500, 500)
    assert np.abs(lut(grid) - truth(grid)).max() < 0.05
    q = ev.fit_quantile_map(hu, rng.uniform(0, 1, 5000))
    assert np.all(np.diff(q(grid)) >= -1e-9)


def test_structure_score_rewards_registered_images_only() -> None:
    s = generate_subject(43006, "abdomen", n_slices=6, size=96, z_range=(180, 280))
    organs = {n: tuple(L[t] for t in ts) for n, ts in ORGANS["abdomen"].items()}
    y = unit_slices(s.mr)
    shifted = np.roll(y, 4, axis=2)
    flat = np.full_like(y, 0.5)
    blurred = np.stack([ndimage.gaussian_filter(k, 2.0) for k in y])
    images = {"truth": y, "inverted": 1.0 - y, "shifted": shifted, "blurred": blurred, "flat": flat}
    res = ev.structure_scores(images, s.labels, organs, y, s.organ_fraction)
    mean = {k: float(np.mean(list(v.values()))) for k, v in res.items()}
    assert res["truth"]["liver"] > 0.97 and mean["truth"] > 0.97  # the procedure's ceiling
    assert abs(mean["inverted"] - mean["truth"]) < 0.01  # it reads boundaries, not brightness
    assert res["shifted"]["liver"] < res["truth"]["liver"] - 0.03
    assert mean["blurred"] < mean["truth"] - 0.02
    assert mean["flat"] < mean["truth"] - 0.1


def test_junctions_and_halfway_segment_on_a_drawn_square() -> None:
    labels = np.zeros((20, 20), np.int16)
    labels[5:15, 5:15] = 1  # organ
    labels[5:15, 15:18] = 2  # a third tissue on its right
    img = np.where(labels == 1, 0.8, np.where(labels == 2, 0.5, 0.1)).astype(np.float32)
    j = ev.junctions(labels)
    assert j[5, 15] and not j[10, 10] and not j[10, 4]
    assert (ev.halfway_segment(img, labels, (1,), img) == (labels == 1)).all()
    moved = np.roll(img, 2, axis=0)  # the organ drawn 2 pixels lower
    seg = ev.halfway_segment(moved, labels, (1,), img)
    assert seg[15:17, 6:14].all() and not seg[5:7, 6:14].any()


def test_evaluate_runs_the_registered_model(tmp_path: Path) -> None:
    torch.manual_seed(0)
    g = ResnetGenerator(CycleNetConfig(ngf=4))
    for p in g.parameters():
        nn.init.normal_(p, 0, 0.2)
    path = export_onnx(g, tmp_path / "w" / "pseudo_mri.onnx")
    (tmp_path / "w" / "pseudo_mri.card.json").write_text(
        json.dumps(build_card("pseudo_mri", path, CONFIGS["tiny"], version="0.0.1")))
    model = load_synthesis_model(load_card("pseudo_mri", tmp_path / "w"), threads=1)
    res = ev.evaluate(ev.phantom_cases(1, n_slices=3, size=64), model,
                      ev.fit_baselines(n_subjects=1, n_slices=3, size=64), panels_dir=tmp_path / "panels")
    assert res["n_series"] == 2 and set(res["table"]) == {"model", "hu_map", "lut_paired"}
    assert set(res["table"]["model"]) == {"unit", "body"}
    assert "truth_mri" in res["structure"] and "mean" in res["structure"]["model"]
    assert res["structure_band_scored"] and all(0 < v <= 1 for v in res["structure_band_scored"].values())
    assert len(list((tmp_path / "panels").glob("*.png"))) == 2
    assert res["onnx_seconds_per_slice"] > 0
    assert "Organ Dice" in ev.format_tables(res)
    json.dumps(res)


@pytest.mark.parametrize("region", ["abdomen", "head_neck"])
def test_body_mask_covers_the_body(region: str) -> None:
    s = generate_subject(43007, region, n_slices=3, size=64)
    body = ev.body_mask_ct(s.ct)
    inside = s.labels != L["air"]
    assert (body & inside).sum() / inside.sum() > 0.9  # all but a partial-volume rim at 64 px
