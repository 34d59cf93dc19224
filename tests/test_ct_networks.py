"""Seed 004's CycleGAN: the generator's shape constraints, ONNX parity (|Δ| < 1e-4 at
sizes other than the trace size), a training step that learns, checkpoint resume, and the
GPU-memory estimate."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from models.common.layers import init_weights
from models.ct import memory
from models.ct.export import build_card, export_onnx, parity
from models.ct.networks import (
    CycleNetConfig,
    PatchDiscriminator,
    ResnetGenerator,
    count_transposed,
    receptive_field,
    with_long_skip,
)
from models.ct.train import CONFIGS, CycleGAN, TrainConfig, load_generator, train

torch.set_num_threads(1)


def test_generator_is_the_seed_004_design() -> None:
    g = ResnetGenerator(CycleNetConfig(ngf=8))
    assert count_transposed(g) == 1
    assert sum(type(m).__name__ == "ResidualBlock" for m in g.modules()) == 2
    assert any(isinstance(m, nn.Upsample) for m in g.modules())
    norms = [m for m in g.modules() if isinstance(m, nn.InstanceNorm2d)]
    assert norms and all(not m.track_running_stats for m in norms)
    assert ResnetGenerator(CycleNetConfig(ngf=8, transposed=0)).multiple == 4
    assert count_transposed(ResnetGenerator(CycleNetConfig(ngf=8, transposed=0))) == 0
    with pytest.raises(ValueError, match="at most one"):
        CycleNetConfig(transposed=2)
    assert receptive_field(3) == 70
    out = PatchDiscriminator(8, 3)(torch.zeros(1, 1, 64, 64))
    assert out.shape[1] == 1 and out.shape[-1] > 1  # a map of patch scores


def test_train_and_eval_mode_compute_the_same_function() -> None:
    g = ResnetGenerator(CycleNetConfig(ngf=4))
    x = torch.randn(2, 1, 32, 48)
    g.train()
    a = g(x)
    g.eval()
    torch.testing.assert_close(a, g(x))


@pytest.mark.parametrize("long_skip", [False, True])
def test_onnx_parity_dynamic_batch_and_size(tmp_path: Path, long_skip: bool) -> None:
    g = ResnetGenerator(CycleNetConfig(ngf=4, long_skip=long_skip))
    for p in g.parameters():  # non-trivial weights
        nn.init.normal_(p, 0, 0.3)
    path = export_onnx(g, tmp_path / "g.onnx")
    for shape in ((1, 1, 64, 64), (3, 1, 40, 72)):
        x = np.random.default_rng(1).uniform(-1, 1, shape).astype(np.float32)
        assert parity(g, path, x) < 1e-4


def test_a_few_steps_reduce_the_cycle_loss() -> None:
    cfg = dataclasses.replace(CONFIGS["tiny"], net=CycleNetConfig(ngf=8, ndf=4, d_layers=2, dn_layers=1), crop=32,
                              steps=1000)
    torch.manual_seed(0)
    model = CycleGAN(cfg)
    gen = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 32), torch.linspace(-1, 1, 32), indexing="ij")
    disc = ((xx**2 + yy**2) < 0.4).float()
    ct = (disc * 0.2 - 0.8)[None, None].repeat(2, 1, 1, 1)
    mr = (disc * 1.6 - 0.9)[None, None].repeat(2, 1, 1, 1)
    first = model.train_step(ct, mr, gen)["cycle"]
    for _ in range(25):
        last = model.train_step(ct, mr, gen)["cycle"]
    assert last < 0.6 * first


def test_train_checkpoints_resume_and_export_card(tmp_path: Path) -> None:
    cfg = CONFIGS["tiny"]
    hist = train(cfg, tmp_path / "run", progress=False)
    assert {"val_mae", "cycle", "d_n"} <= set(hist["steps"][-1]) and hist["peak_rss_mb"] > 0
    ckpt = torch.load(tmp_path / "run" / "latest.pt", weights_only=False)
    assert ckpt["step"] == cfg.steps and TrainConfig.from_dict(ckpt["config"]) == cfg
    more = dataclasses.replace(cfg, steps=cfg.steps + 2)
    hist2 = train(more, tmp_path / "run", resume=tmp_path / "run" / "latest.pt", progress=False)
    assert hist2["steps"][-1]["step"] == cfg.steps + 2
    g, cfg2, _ = load_generator(tmp_path / "run" / "latest.pt")
    onnx_path = export_onnx(g, tmp_path / "w" / "pseudo_mri.onnx")
    card = build_card("pseudo_mri", onnx_path, cfg2, version="0.0.1")
    assert card["normalisation"]["kind"] == "hu_window" and card["runtime"] == "pseudo_mri"
    # a saved config with a removed option still loads when the option was off, else it says so
    old = {**ckpt["config"], "lambda_edge": 0.0, "net": {**ckpt["config"]["net"], "input_blur": 0.0,
                                                        "input_basis": [], "input_basis_width": 0.08}}
    assert TrainConfig.from_dict(old) == cfg
    with pytest.raises(ValueError, match="lambda_edge=2.0 was removed"):
        TrainConfig.from_dict({**old, "lambda_edge": 2.0})
    json.dumps(card)


def test_memory_estimate_scales_with_pixels_and_full_config_fits_the_seed_budget() -> None:
    small = memory.estimate(CONFIGS["full"], batch=1, side=128)
    big = memory.estimate(CONFIGS["full"], batch=1, side=256)
    assert big["activation_gib"] == pytest.approx(4 * small["activation_gib"], rel=0.01)
    assert big["total_gib"] < 10  # seed 004: under 10 GB


def test_curve_config_round_trips_and_its_card_names_the_curve() -> None:
    cfg = CONFIGS["small"]
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    spec = cfg.normalisation()
    assert spec["kind"] == "hu_curve" and spec["knots_hu"][0] == -1000.0
    x = cfg.ct_input(np.array([-1000.0, -100.0, 45.0, 1500.0]))
    assert x[0] == -1.0 and x[-1] == 1.0 and np.all(np.diff(x) > 0)
    assert CONFIGS["seed"].normalisation()["kind"] == "hu_window"


def test_train_cli_resumes_with_new_loss_weights(tmp_path: Path, capsys) -> None:
    """A warm restart may switch terms on (the NGF structure term after the mapping is learnt)."""
    from models.ct.train import main

    assert main(["--config", "tiny", "--out", str(tmp_path / "a"), "--no-progress"]) == 0
    assert main(["--resume", str(tmp_path / "a" / "latest.pt"), "--steps", "5", "--lambda-ngf", "2",
                 "--lambda-identity", "0", "--lambda-tv", "0.5", "--out", str(tmp_path / "b"), "--no-progress"]) == 0
    ckpt = torch.load(tmp_path / "b" / "latest.pt", weights_only=False)
    cfg = TrainConfig.from_dict(ckpt["config"])
    assert (cfg.lambda_ngf, cfg.lambda_identity, cfg.lambda_tv, cfg.steps) == (2.0, 0.0, 0.5, 5)
    last = ckpt["history"]["steps"][-1]
    assert last["step"] == 5 and 0.0 < last["ngf"] <= 1.0 and last["identity"] == 0.0 and last["tv"] > 0


def test_plain_generator_weights_load_into_a_long_skip_generator_unchanged() -> None:
    cfg = CycleNetConfig(ngf=4)
    plain = ResnetGenerator(cfg)
    init_weights(plain)
    skip = ResnetGenerator(dataclasses.replace(cfg, long_skip=True))
    skip.load_state_dict(with_long_skip(plain.state_dict(), cfg))
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(plain(x), skip(x), atol=1e-6)


def test_init_from_a_plain_run_adds_the_long_skip_and_refuses_other_shapes(tmp_path: Path) -> None:
    from models.ct.train import main

    assert main(["--config", "tiny", "--out", str(tmp_path / "a"), "--no-progress"]) == 0
    tiny = CONFIGS["tiny"]
    skip = dataclasses.replace(tiny, net=dataclasses.replace(tiny.net, long_skip=True), steps=2)
    hist = train(skip, tmp_path / "b", init_from=tmp_path / "a" / "latest.pt", progress=False)
    assert hist["init_from"]["long_skip_added"] and hist["init_from"]["step"] == tiny.steps
    wider = dataclasses.replace(tiny, net=dataclasses.replace(tiny.net, ngf=8), steps=2)
    with pytest.raises(ValueError, match="does not fit"):
        train(wider, tmp_path / "c", init_from=tmp_path / "a" / "latest.pt", progress=False)


def test_guided_filter_flattens_a_tissue_without_blurring_across_the_ct_boundary() -> None:
    from scipy import ndimage

    from models.common.layers import GuidedSmoothing
    from models.guided_filter import GuidedFilter

    rng = torch.Generator().manual_seed(0)
    left = torch.zeros(1, 1, 48, 48, dtype=torch.bool)
    left[..., :24] = True
    guide = torch.where(left, -0.5, 0.3) + 0.03 * torch.randn(1, 1, 48, 48, generator=rng)  # CT with quantum noise
    image = torch.where(left, 0.2, 0.8) + 0.05 * torch.randn(1, 1, 48, 48, generator=rng)  # a blotchy pseudo-MRI
    out = GuidedSmoothing(GuidedFilter(radius=3, sigma_px=2.0, sigma_range=0.1))(image, guide)
    for side in (left, ~left):
        assert out[side].std() < 0.5 * image[side].std()  # flat tissue comes out flat
    # the columns next to the boundary keep their own tissue's value (a plain blur mixes them)
    assert abs(float(out[..., 23].mean()) - 0.2) < 0.02 and abs(float(out[..., 24].mean()) - 0.8) < 0.02
    blurred = torch.from_numpy(ndimage.gaussian_filter(image.numpy(), (0, 0, 2.0, 2.0), mode="reflect"))
    assert abs(float(blurred[..., 23].mean()) - 0.2) > 0.1
    # a flat image stays what it was, whatever the guide
    flat = torch.full((2, 1, 16, 16), 0.4)
    assert torch.allclose(GuidedSmoothing(GuidedFilter())(flat, torch.randn(2, 1, 16, 16)), flat, atol=1e-6)


def test_the_numpy_filter_the_evaluations_use_is_the_exported_one() -> None:
    from models.common.layers import GuidedSmoothing
    from models.guided_filter import GuidedFilter

    rng = np.random.default_rng(4)
    image, guide = rng.uniform(0, 1, (2, 2, 40, 56)).astype(np.float32)
    for spec in (GuidedFilter(), GuidedFilter(2, 1.0, 0.04)):
        with torch.no_grad():
            ref = GuidedSmoothing(spec)(torch.from_numpy(image[:, None]), torch.from_numpy(guide[:, None])).numpy()
        assert np.abs(spec.smooth(image, guide) - ref[:, 0]).max() < 1e-5
    assert GuidedFilter.from_card(GuidedFilter(2, 1.0, 0.04).to_dict()) == GuidedFilter(2, 1.0, 0.04)
    assert GuidedFilter.from_card(None) is None


def test_generator_with_the_guided_filter_exports_with_parity(tmp_path: Path) -> None:
    from models.common.layers import with_post_filter
    from models.guided_filter import GuidedFilter

    g = ResnetGenerator(CycleNetConfig(ngf=4, long_skip=True))
    for p in g.parameters():
        nn.init.normal_(p, 0, 0.3)
    filtered = with_post_filter(g, GuidedFilter())
    path = export_onnx(filtered, tmp_path / "g.onnx")
    for shape in ((1, 1, 64, 64), (3, 1, 40, 72)):
        x = np.random.default_rng(2).uniform(-1, 1, shape).astype(np.float32)
        assert parity(filtered, path, x) < 1e-4
    with torch.no_grad():
        x = torch.from_numpy(np.random.default_rng(3).uniform(-1, 1, (1, 1, 32, 32)).astype(np.float32))
        assert not torch.allclose(filtered(x), g(x), atol=1e-3)  # the filter is in the exported function


def test_card_architecture_names_every_option_that_is_not_in_the_seed() -> None:
    from models.ct.export import architecture
    from models.ct.recipe import RECIPE

    plain = architecture(CONFIGS["seed"])
    assert "not in the seed" not in plain and "identity" in plain
    last = RECIPE.resolve(CONFIGS)[-1]  # the demo's last stage
    text = architecture(last)
    assert "normalised-gradient-field" in text and "HU curve" in text
    assert "full-resolution skip" in text and "total-variation" in text
