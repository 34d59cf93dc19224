"""Training: a few steps on tiny phantom data write checkpoints with their options; resume
continues from the saved step; augmentation keeps input and target aligned."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from models.dce.train import CONFIGS, TrainConfig, augment, load_generator, train


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def test_train_checkpoint_and_resume(tmp_path: Path) -> None:
    cfg = dataclasses.replace(CONFIGS["tiny"], threads=1)
    hist = train(cfg, tmp_path, progress=False)
    assert [s["step"] for s in hist["steps"]] == [2, 4]
    ckpt = torch.load(tmp_path / "latest.pt", weights_only=False)
    assert ckpt["step"] == 4 and TrainConfig.from_dict(ckpt["config"]) == cfg
    assert json.loads((tmp_path / "config.json").read_text())["net"]["ngf"] == 4
    longer = dataclasses.replace(cfg, steps=6)
    hist2 = train(longer, tmp_path, resume=tmp_path / "latest.pt", progress=False)
    assert hist2["steps"][-1]["step"] == 6
    g, loaded_cfg, _ = load_generator(tmp_path / "latest.pt")
    assert not g.training and loaded_cfg.steps == 6


def test_augment_moves_input_and_target_together() -> None:
    cfg = CONFIGS["tiny"]
    x = torch.rand(3, 1, 64, 64) * 2 - 1
    gen = torch.Generator().manual_seed(0)
    ax, ay = augment(x, x.clone(), 32, cfg, gen)
    assert ax.shape == (3, 1, 32, 32)
    torch.testing.assert_close(ax, ay)  # same transform on both
    big = dataclasses.replace(cfg, rotate_deg=45.0, scale_range=(0.5, 0.5))
    bx, _ = augment(torch.full((1, 1, 64, 64), 1.0), torch.ones(1, 1, 64, 64), 64, big, gen)
    assert float(bx.min()) == pytest.approx(-1.0)  # outside the image is background


def test_crop_must_suit_the_unet() -> None:
    with pytest.raises(ValueError, match="multiples"):
        dataclasses.replace(CONFIGS["small"], crop=192)


def test_demo_schedule_ends_on_whole_slices_with_decayed_lr() -> None:
    cfg = CONFIGS["small"]  # the demo's
    assert cfg.crop_at(0) == 128 and cfg.crop_at(cfg.steps - 1) == cfg.size == 384
    assert cfg.lr_at(0) == cfg.lr == 2e-4 and cfg.lr_at(cfg.steps - 1) < 1e-5
    assert (cfg.lambda_l1, cfg.beta1) == (100.0, 0.5)  # seed 000 / pix2pix settings
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_focus_crops_centre_on_small_bright_structures() -> None:
    import numpy as np

    from models.dce.train import focus_points

    y = np.full((1, 64, 64), -1.0, np.float32)
    y[0, 10:12, 40:42] = 1.0  # a small bright "vessel"
    (pts,) = focus_points(y, 0.4)
    assert len(pts) > 0
    cols = ((pts[:, 0] + 1) * 64 - 1) / 2
    rows = ((pts[:, 1] + 1) * 64 - 1) / 2
    assert np.all(np.abs(rows - 10.5) <= 1.5) and np.all(np.abs(cols - 40.5) <= 1.5)
    cfg = CONFIGS["tiny"]
    x = torch.zeros(1, 1, 64, 64)
    x[0, 0, 10:12, 40:42] = 1.0
    centre = torch.from_numpy(pts[:1])
    ax, _ = augment(x, x.clone(), 32, dataclasses.replace(cfg, rotate_deg=0.0, scale_range=(1.0, 1.0),
                                                          mirror=False),
                    torch.Generator().manual_seed(0), centre)
    assert float(ax.max()) > 0.5  # the bright spot is inside the crop
