"""Normalised gradient fields (NGF): a structure term that ignores which tissue is brighter.

CT and T2 disagree on the sign of most boundaries (fat is dark on CT, bright on T2), so a term
that keeps the CT's boundaries in the pseudo-MRI must not care about sign or height, only about
where an edge is and which way it runs. NGF (Haber & Modersitzki, 2006, for multimodal
registration) does that: each image's gradient is scaled to length < 1 by
g / sqrt(|g|^2 + eps^2), so a step much higher than eps counts as a full edge and noise much
lower than eps counts as none, and two fields agree when they are parallel or anti-parallel.

    loss = sum(|a|^2 (1 - (u . b)^2)) / sum(|a|^2),   u = a / |a|

with a, b the normalised fields of the CT (input) and the pseudo-MRI (output). Each CT pixel
weighs |a|^2, so where the CT is flat nothing is asked and the output may show boundaries the
CT cannot (recall only, like seed 002's structure term). The loss is 0 when the output has a
full edge (|b| -> 1) along every CT edge, in either sign, and 1 when it is flat.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# [-1, 1] units per pixel after the 3x3 binomial blur: above CT quantum noise (4-10 HU is
# ~0.02-0.03 there on the soft-tissue curve), well below a 50 HU organ boundary (~0.15).
EPS_CT = 0.05
EPS_MR = 0.05

_BLUR = torch.tensor([1.0, 2.0, 1.0]) / 4.0


def _gradient(x: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) -> (N, 2, H, W): central differences of the binomially blurred image."""
    k = torch.outer(_BLUR, _BLUR).to(x)[None, None]
    x = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k)
    x = F.pad(x, (1, 1, 1, 1), mode="replicate")
    gy = 0.5 * (x[:, :, 2:, 1:-1] - x[:, :, :-2, 1:-1])
    gx = 0.5 * (x[:, :, 1:-1, 2:] - x[:, :, 1:-1, :-2])
    return torch.cat([gy, gx], dim=1)


def normalised_gradient(x: torch.Tensor, eps: float) -> torch.Tensor:
    g = _gradient(x)
    return g / torch.sqrt((g * g).sum(dim=1, keepdim=True) + eps * eps)


def ngf_loss(ct: torch.Tensor, out: torch.Tensor, eps_ct: float = EPS_CT, eps_out: float = EPS_MR) -> torch.Tensor:
    """Share of the CT's edge weight that the output does not repeat (0 = all, 1 = none)."""
    a = normalised_gradient(ct, eps_ct)
    b = normalised_gradient(out, eps_out)
    w = (a * a).sum(dim=1)
    u = a / torch.sqrt(w + 1e-12)[:, None]
    dot = (u * b).sum(dim=1)
    return (w * (1.0 - dot * dot)).sum() / w.sum().clamp(min=1e-6)


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between neighbouring pixels ((N, C, H, W), anisotropic L1 TV)."""
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()
