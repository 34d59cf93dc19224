"""Seed 002's conditional translator: the condition selects the output, ONNX parity with
two inputs and dynamic batch/size (|Δ| < 1e-4), a training step, resume, card fields."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models.brain.export import build_card, export_onnx, parity, parity_inputs
from models.brain.networks import BrainNetConfig, ConditionalTranslator, ContrastDiscriminator
from models.brain.train import CONFIGS, MultiContrastGAN, TrainConfig, load_translator, train

torch.set_num_threads(1)


def _translator(seed: int = 0) -> ConditionalTranslator:
    torch.manual_seed(seed)
    t = ConditionalTranslator(BrainNetConfig(ngf=4, ndf=4, enc_blocks=1, dec_blocks=1))
    for p in t.parameters():
        nn.init.normal_(p, 0, 0.3)
    return t.eval()


def test_condition_changes_the_output_and_norms_have_no_running_stats() -> None:
    t = _translator()
    x = torch.randn(1, 1, 32, 32)
    eye = torch.eye(4)
    outs = [t(x, eye[i:i + 1]) for i in range(4)]
    assert all(o.shape == x.shape for o in outs)
    assert float((outs[0] - outs[1]).abs().max()) > 1e-3
    assert all(not m.track_running_stats for m in t.modules() if isinstance(m, nn.InstanceNorm2d))
    d, c = ContrastDiscriminator(BrainNetConfig(ndf=4))(x)
    assert d.shape[1] == 1 and c.shape == (1, 4)


def test_onnx_parity_two_inputs_dynamic(tmp_path: Path) -> None:
    t = _translator()
    path = export_onnx(t, tmp_path / "b.onnx", 4)
    assert parity(t, path, *parity_inputs(4)) < 1e-4
    x, cond = parity_inputs(4, n=1, h=48, w=64)
    assert parity(t, path, x, cond) < 1e-4


def test_training_step_learns_reconstruction() -> None:
    cfg = dataclasses.replace(CONFIGS["tiny"], steps=1000)
    torch.manual_seed(0)
    m = MultiContrastGAN(cfg)
    gen = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 32), torch.linspace(-1, 1, 32), indexing="ij")
    x = (((xx**2 + yy**2) < 0.5).float() * 1.5 - 0.9)[None, None].repeat(2, 1, 1, 1)
    src = torch.tensor([0, 1])
    st, bg = torch.zeros_like(x), (x < -0.8).float()
    first = m.train_step(x, src, st, bg, gen)
    for _ in range(30):
        last = m.train_step(x, src, st, bg, gen)
    assert last["rec"] < 0.5 * first["rec"]
    assert set(first) >= {"adv", "cls", "cycle", "cycle_consistency", "code", "structure", "background"}


def test_train_resume_and_card(tmp_path: Path) -> None:
    cfg = CONFIGS["tiny"]
    train(cfg, tmp_path / "run", progress=False)
    ckpt = torch.load(tmp_path / "run" / "latest.pt", weights_only=False)
    assert TrainConfig.from_dict(ckpt["config"]) == cfg and ckpt["step"] == cfg.steps
    hist = train(dataclasses.replace(cfg, steps=cfg.steps + 1), tmp_path / "run",
                 resume=tmp_path / "run" / "latest.pt", progress=False)
    assert hist["steps"][-1]["step"] == cfg.steps + 1
    t, cfg2, _ = load_translator(tmp_path / "run" / "latest.pt")
    onnx_path = export_onnx(t, tmp_path / "w" / "brain_contrasts.onnx", cfg2.net.n_contrasts)
    card = build_card("brain_contrasts", onnx_path, cfg2, version="0.0.1")
    cond = card["conditioning"]
    assert cond["contrasts"] == ["t1", "t2", "t1c", "flair"] and cond["source_labels"]["brain_t1c"] == "t1c"
    assert card["runtime"] == "conditional_contrast" and np.isfinite(card["training"]["lr"])


def test_input_gate_starts_closed_exports_and_warm_starts_from_a_gateless_run(tmp_path: Path) -> None:
    plain_cfg = CONFIGS["tiny"]
    train(plain_cfg, tmp_path / "plain", progress=False)
    gate_cfg = dataclasses.replace(plain_cfg, net=dataclasses.replace(plain_cfg.net, input_gate=True))
    hist = train(gate_cfg, tmp_path / "gate", progress=False, init_from=tmp_path / "plain" / "latest.pt")
    assert hist["init_from"]["new_layers"] == ["decoder.gate.1.weight", "decoder.gate.1.bias"]
    # before any gate step the gated network is the plain one, up to the closed gate's 2 %
    plain, _, _ = load_translator(tmp_path / "plain" / "latest.pt")
    fresh = ConditionalTranslator(gate_cfg.net).eval()
    fresh.load_state_dict(plain.state_dict(), strict=False)
    x, cond = parity_inputs(4, n=1, h=32, w=32)
    a, b = (m(torch.from_numpy(x), torch.from_numpy(cond)) for m in (plain, fresh))
    assert float((a - b).abs().max()) < 0.05
    # a wide-open gate passes the input through whatever the target
    nn.init.constant_(fresh.decoder.gate[1].bias, 20.0)
    assert float((fresh(torch.from_numpy(x), torch.from_numpy(cond)) - torch.from_numpy(x)).abs().max()) < 1e-6
    t, _, _ = load_translator(tmp_path / "gate" / "latest.pt")
    path = export_onnx(t, tmp_path / "g.onnx", 4)
    assert parity(t, path, *parity_inputs(4, n=1, h=48, w=64)) < 1e-4
    with pytest.raises(RuntimeError, match="size mismatch"):  # another width is refused
        train(dataclasses.replace(plain_cfg, net=dataclasses.replace(plain_cfg.net, ngf=6)), tmp_path / "bad",
              progress=False, init_from=tmp_path / "plain" / "latest.pt")


def test_change_weighted_paired_l1_counts_the_pixels_the_contrast_changes() -> None:
    from models.brain.train import paired_l1

    source = torch.zeros(1, 1, 8, 8)
    target = source.clone()
    target[..., 2:4, 2:4] = 1.0  # the enhancing rim: only here does T1c differ from T1
    copy = source.clone()  # output = the input: wrong only on the rim
    blur = target * 0.9 + 0.05  # output = roughly the target everywhere
    assert paired_l1(copy, target, source) == pytest.approx(F.l1_loss(copy, target).item())
    plain = paired_l1(copy, target, source).item() / paired_l1(blur, target, source).item()
    weighted = paired_l1(copy, target, source, 10.0).item() / paired_l1(blur, target, source, 10.0).item()
    assert weighted > 2 * plain  # copying the input costs far more once the change is weighted


def test_gate_is_told_to_pass_the_input_where_the_target_repeats_it() -> None:
    from models.brain.train import gate_target_l1

    source = torch.zeros(1, 1, 4, 4)
    target = source.clone()
    target[..., :2, :] = 0.8  # the enhancing part: drawn, not passed through
    ideal = torch.ones_like(source)
    ideal[..., :2, :] = 0.0
    assert gate_target_l1(ideal, target, source, 0.15).item() == 0.0
    assert gate_target_l1(torch.ones_like(source), target, source, 0.15).item() == pytest.approx(0.5)


def test_gate_term_skips_samples_whose_target_does_not_repeat_the_input() -> None:
    from models.brain.train import gate_target_l1

    source = torch.zeros(2, 1, 4, 4)
    target = source.clone()
    target[0, :, 0, 0] = 0.8  # near-identity pair (T1 -> T1c): 15 of 16 pixels agree
    target[1, :, :2, :] = 0.8  # a different contrast (FLAIR -> T1): half agree by chance
    head = torch.ones_like(source)
    closed = torch.zeros_like(source)  # every gate shut: wrong where the target repeats the input
    both = gate_target_l1(closed, target, source, 0.15)
    near = gate_target_l1(closed, target, source, 0.15, head, min_agreement=0.9)
    assert both.item() == pytest.approx((15 / 16 + 8 / 16) / 2)
    assert near.item() == pytest.approx(15 / 16 / 2)  # the second sample's gate is left free
    # balanced: the one changed pixel of the first sample weighs as much as its 15 others
    opened = torch.ones_like(source[:1])
    assert gate_target_l1(opened, target[:1], source[:1], 0.15, head[:1], 0.9).item() == pytest.approx(1 / 16)
    assert gate_target_l1(opened, target[:1], source[:1], 0.15, head[:1], 0.9, balanced=True).item() == 0.5
    outside = head.clone()
    outside[0, :, 2:, :] = 0.0  # agreement counts inside the head only: 7 of 8 < 0.9
    assert gate_target_l1(closed, target, source, 0.15, outside, min_agreement=0.9).item() == 0.0


def test_gate_term_trains_and_is_reported() -> None:
    cfg = dataclasses.replace(CONFIGS["tiny"], lambda_paired=1.0, lambda_gate=2.0,
                              net=dataclasses.replace(CONFIGS["tiny"].net, input_gate=True))
    m = MultiContrastGAN(cfg)
    x = torch.full((2, 1, 32, 32), -0.5)
    paired = x.expand(-1, 4, -1, -1).clone()
    losses = m.train_step(x, torch.tensor([0, 1]), torch.zeros_like(x), torch.zeros_like(x),
                          torch.Generator().manual_seed(0), paired)
    assert losses["gate"] > 0.5  # the gate starts nearly closed where every target repeats the input


def test_decoded_term_trains_the_decoder_where_the_gate_passes_the_input() -> None:
    """With the gate wide open the output is the input, so no term reaches the decoder's last
    convolution; `lambda_decoded` pulls the decoder's own image to the target there too."""
    moved = {}
    for weight in (0.0, 1.0):
        cfg = dataclasses.replace(CONFIGS["tiny"], lambda_paired=1.0, lambda_decoded=weight, lambda_adv=0.0,
                                  net=dataclasses.replace(CONFIGS["tiny"].net, input_gate=True))
        torch.manual_seed(0)
        m = MultiContrastGAN(cfg)
        with torch.no_grad():
            m.T.decoder.gate[1].bias.fill_(30.0)
        before = m.T.decoder.out[1].weight.detach().clone()
        x = torch.rand(2, 1, 32, 32) * 2 - 1
        losses = m.train_step(x, torch.tensor([0, 1]), torch.zeros_like(x), torch.zeros_like(x),
                              torch.Generator().manual_seed(0), (x + 0.5).expand(-1, 4, -1, -1).clone())
        moved[weight] = float((m.T.decoder.out[1].weight.detach() - before).abs().max())
        assert (losses["decoded"] > 0.1) == (weight > 0)
    assert moved[1.0] > 100 * moved[0.0]


def test_gate_knows_the_source_contrast_exports_and_warm_starts_from_a_gated_run(tmp_path: Path) -> None:
    gate_net = dataclasses.replace(CONFIGS["tiny"].net, input_gate=True)
    gated = dataclasses.replace(CONFIGS["tiny"], net=gate_net, steps=2)
    train(gated, tmp_path / "gate", progress=False)
    paired = dataclasses.replace(gated, net=dataclasses.replace(gate_net, gate_source=True), lambda_paired=1.0,
                                 lambda_gate=1.0, gate_min_agreement=0.9)
    hist = train(paired, tmp_path / "pair", progress=False, init_from=tmp_path / "gate" / "latest.pt")
    assert hist["init_from"]["new_layers"] == ["decoder.gate_pair"]
    t, _, _ = load_translator(tmp_path / "pair" / "latest.pt")
    with pytest.raises(ValueError, match="source_condition"):
        t(torch.zeros(1, 1, 32, 32), torch.eye(4)[:1])
    # the pair bias opens T1 -> T1c alone: the same target from FLAIR keeps its gate
    x, cond = parity_inputs(4, n=1, h=32, w=32)
    t1, t1c, flair = (torch.eye(4)[[i]] for i in (0, 2, 3))
    with torch.no_grad():
        t.decoder.gate_pair.zero_()
        t.decoder.gate_pair[0, 2] = 30.0
        xt = torch.from_numpy(x)
        assert float((t(xt, t1c, t1) - xt).abs().max()) < 1e-6
        assert float((t(xt, t1c, flair) - xt).abs().max()) > 0.1
    path = export_onnx(t, tmp_path / "p.onnx", 4)
    assert parity(t, path, *parity_inputs(4, n=4, h=48, w=64)) < 1e-4
    card = build_card("brain_contrasts", path, paired, version="0.0.1")
    assert card["conditioning"]["source_input"] == "source"
    assert "per (source, target) pair" in card["architecture"] and "Not in the seed" in card["architecture"]
    assert "source_input" not in build_card("brain_contrasts", path, gated, version="0.0.1")["conditioning"]
    # the input-guided filter after it: same three inputs, still in parity
    from models.common.layers import with_post_filter
    from models.guided_filter import GuidedFilter

    filtered = with_post_filter(t, GuidedFilter(2, 2.0, 0.04))
    fpath = export_onnx(filtered, tmp_path / "f.onnx", 4)
    assert parity(filtered, fpath, *parity_inputs(4, n=4, h=48, w=64)) < 1e-4
    with torch.no_grad():
        xt = torch.from_numpy(parity_inputs(4, n=1, h=32, w=32)[0])
        assert float((filtered(xt, t1c, flair) - t(xt, t1c, flair)).abs().max()) > 1e-3


def test_pair_gate_bias_parses_applies_exports_and_is_chosen_on_validation_subjects(tmp_path: Path) -> None:
    from models.brain.gate_bias import (
        apply_pair_bias,
        calibrate,
        pair_bias_flags,
        parse_pair_bias,
        smallest_passing,
    )

    assert parse_pair_bias("t1:t1c=5") == ("t1", "t1c", 5.0)
    for bad in ("t1:t1=1", "t1-t1c=1", "t1:dwi=1", "t1:t1c"):
        with pytest.raises(ValueError):
            parse_pair_bias(bad)
    default = (("t1", "t1c", 5.0),)
    assert pair_bias_flags(default, default) == ""
    assert pair_bias_flags((), default) == " --no-gate-bias"
    assert pair_bias_flags((("t1", "t1c", 4.5),), default) == " --gate-bias t1:t1c=4.5"
    with pytest.raises(ValueError, match="gate_source"):
        apply_pair_bias(_translator(), default)

    torch.manual_seed(0)
    t = ConditionalTranslator(BrainNetConfig(ngf=4, ndf=4, enc_blocks=1, dec_blocks=1, input_gate=True,
                                             gate_source=True)).eval()
    x, _ = parity_inputs(4, n=1, h=32, w=32)
    xt, t1, t1c, flair = torch.from_numpy(x), *(torch.eye(4)[[i]] for i in (0, 2, 3))
    apply_pair_bias(t, (("t1", "t1c", 30.0),))
    with torch.no_grad():  # that pair now passes its input; the same target from FLAIR does not
        assert float((t(xt, t1c, t1) - xt).abs().max()) < 1e-5
        assert float((t(xt, t1c, flair) - xt).abs().max()) > 1e-2
    path = export_onnx(t, tmp_path / "b.onnx", 4)
    assert parity(t, path, *parity_inputs(4, n=2, h=32, w=48)) < 1e-4
    cfg = dataclasses.replace(CONFIGS["tiny"], net=BrainNetConfig(ngf=4, ndf=4, enc_blocks=1, dec_blocks=1,
                                                                  input_gate=True, gate_source=True))
    card = build_card("brain_contrasts", path, cfg, version="0.0.1", gate_bias=default)
    assert card["gate_bias"] == {"t1->t1c": 5.0}
    assert "T1->T1c gate logit raised by 5" in card["architecture"] and "comes out as the T1" in card["limitations"]
    assert "gate_bias" not in build_card("brain_contrasts", path, cfg, version="0.0.1")
    apply_pair_bias(t, (("t1", "t1c", -30.0),))

    with pytest.raises(ValueError, match="never the test"):
        calibrate(t, "t1", "t1c", split="test")
    learnt = t.decoder.gate_pair.detach().clone()
    rows = calibrate(t, "t1", "t1c", grid=(0.0, 30.0), n_subjects=1, n_slices=2, size=32)
    assert torch.equal(t.decoder.gate_pair.detach(), learnt)  # the network is left as it was
    mae = [(r["table"]["model"]["body"]["mae"][0], r["table"]["identity"]["body"]["mae"][0]) for r in rows]
    assert mae[1][0] < mae[0][0] and abs(mae[1][0] - mae[1][1]) < 1e-3  # +30: the input itself
    assert smallest_passing([{"bias": 2.0, "shortfalls": []}, {"bias": 1.0, "shortfalls": ["x"]},
                             {"bias": 3.0, "shortfalls": []}]) == 2.0
    assert smallest_passing([{"bias": 0.0, "shortfalls": ["x"]}]) is None
