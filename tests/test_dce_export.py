"""Export: ONNX Runtime computes what PyTorch computes (max |Δ| < 1e-4) on a tiny U-Net, for
several batch sizes and image sizes, and the card it writes loads through the registry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dicom_synth.inference import SynthesisModel
from dicom_synth.registry import load_card
from models.common.export import write_card
from models.dce.export import build_card, export_onnx, parity
from models.dce.networks import NetConfig, PatchDiscriminator, UnetGenerator, receptive_field
from models.dce.train import CONFIGS


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _tiny_generator(seed: int = 0) -> UnetGenerator:
    torch.manual_seed(seed)
    g = UnetGenerator(NetConfig(ngf=4, num_downs=5))
    for p in g.parameters():  # away from the near-zero init, so parity means something
        torch.nn.init.normal_(p, 0.0, 0.3)
    return g.eval()


def test_onnx_matches_torch_for_batches_and_sizes(tmp_path: Path) -> None:
    g = _tiny_generator()
    path = export_onnx(g, tmp_path / "tiny.onnx")
    rng = np.random.default_rng(0)
    for b, h, w in ((1, 32, 32), (3, 64, 96), (2, 96, 32)):
        x = rng.uniform(-1, 1, (b, 1, h, w)).astype(np.float32)
        assert parity(g, path, x) < 1e-4


def test_generator_is_the_same_function_in_train_and_eval_mode() -> None:
    g = _tiny_generator(1)
    x = torch.rand(2, 1, 64, 64) * 2 - 1
    with torch.no_grad():
        ev = g.eval()(x)
        tr = g.train()(x)
    torch.testing.assert_close(ev, tr)


def test_seven_down_steps_run_at_384_and_patchgan_sees_70_pixels() -> None:
    cfg = NetConfig(ngf=2, ndf=2, num_downs=7)
    g = UnetGenerator(cfg).eval()
    with torch.no_grad():
        y = g(torch.zeros(1, 1, 384, 384))
    assert y.shape == (1, 1, 384, 384) and float(y.abs().max()) <= 1.0
    assert cfg.spatial_multiple == 128 and receptive_field(cfg) == 70
    d = PatchDiscriminator(cfg)
    assert d(torch.zeros(1, 1, 256, 256), torch.zeros(1, 1, 256, 256)).shape == (1, 1, 30, 30)


def test_card_is_loadable_and_runs_through_the_service_path(tmp_path: Path) -> None:
    g = _tiny_generator()
    path = export_onnx(g, tmp_path / "dce_tiny.onnx")
    cfg = CONFIGS["tiny"]
    card = build_card("dce_tiny", path, cfg, version="0.0.1", metrics={"note": "test"},
                      training_data={"kind": "none"})
    write_card(card, tmp_path, "dce_tiny")
    loaded = load_card("dce_phase1", tmp_path)
    assert loaded.sha256 == card["sha256"] and loaded.input["spatial_multiple"] == 32
    model = SynthesisModel.from_card(loaded, threads=1)
    vol = np.random.default_rng(3).uniform(0, 500, (3, 40, 50)).astype(np.float32)
    (out,) = model.run(vol)
    # the same numbers as torch on the normalised, padded slice, mapped to stored units
    from dicom_synth import intensity

    x = intensity.normalise_slices(vol)[:, None]
    xp = np.pad(x, ((0, 0), (0, 0), (0, 24), (0, 14)), constant_values=-1.0)
    with torch.no_grad():
        ref = g(torch.from_numpy(xp)).numpy()[:, 0, :40, :50]
    np.testing.assert_allclose(out.pixels, intensity.to_stored(ref, loaded.output_mapping),
                               atol=0.5)
