"""Training memory of the CycleGAN "on paper": seed 004 says its 2D CycleGAN trains in
under 10 GB of GPU memory, where Dong et al.'s 3D CycleGAN needed 28 GB GPU + 10 GB CPU.

The estimate counts what autograd keeps during the generator step (the peak): every
module output of every network pass in that step, measured by forward hooks on a small
input and scaled to the training size (all layers are convolutional, so activations grow
with H·W), plus weights, gradients and Adam's two moments of all five networks, in fp32.
Not counted: the CUDA context and cuDNN workspaces (typically 0.5-1.5 GB more).

    python -m models.ct.memory --config full
"""

from __future__ import annotations

import argparse
import json

import torch

from models.ct.networks import PatchDiscriminator, ResnetGenerator
from models.ct.train import CONFIGS, TrainConfig

BYTES = 4  # fp32


def _activation_elements(net: torch.nn.Module, side: int) -> int:
    """Elements of all leaf-module outputs for one (1, 1, side, side) forward pass."""
    total = 0

    def hook(_m, _inp, out) -> None:
        nonlocal total
        total += out.numel()

    handles = [m.register_forward_hook(hook) for m in net.modules() if not list(m.children())]
    with torch.no_grad():
        net(torch.zeros(1, 1, side, side))
    for h in handles:
        h.remove()
    return total


def estimate(cfg: TrainConfig, batch: int | None = None, side: int | None = None) -> dict:
    """Bytes (and GiB) for one generator step at `batch` x `side`² (default: the config's)."""
    batch = batch or cfg.batch_size
    side = side or cfg.crop
    n = cfg.net
    g = ResnetGenerator(n)
    d = PatchDiscriminator(n.ndf, n.d_layers)
    dn = PatchDiscriminator(n.ndf, n.dn_layers)
    probe = 64
    scale = batch * (side / probe) ** 2
    g_act = _activation_elements(g, probe) * scale
    d_act = _activation_elements(d, probe) * scale
    dn_act = _activation_elements(dn, probe) * scale
    g_passes = 4 + (2 if cfg.lambda_identity > 0 else 0)  # G(ct), F(G(ct)), F(mr), G(F(mr)), identities
    activations = g_passes * g_act + 2 * d_act + dn_act  # D_mr, D_ct, D_n on the fakes
    params = 2 * sum(p.numel() for p in g.parameters()) + 2 * sum(p.numel() for p in d.parameters()) \
        + sum(p.numel() for p in dn.parameters())
    state = params * 4  # weights, gradients, Adam m and v
    total = (activations + state) * BYTES
    gib = 2.0**30
    return {"batch": batch, "side": side, "parameters": int(params),
            "activation_gib": round(activations * BYTES / gib, 3),
            "weights_grads_adam_gib": round(state * BYTES / gib, 4),
            "total_gib": round(total / gib, 3),
            "note": "fp32 autograd-saved module outputs of the generator step + weights, grads "
                    "and Adam moments; CUDA context and cuDNN workspace not included",
            "seed004_reported": "< 10 GB GPU (2D CycleGAN)",
            "dong2019_3d_cyclegan": "28 GB GPU + 10 GB CPU"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Estimate CycleGAN training memory (GPU, on paper).")
    p.add_argument("--config", choices=sorted(CONFIGS), default="full")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--side", type=int, default=None)
    a = p.parse_args(argv)
    print(json.dumps(estimate(CONFIGS[a.config], a.batch, a.side), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
