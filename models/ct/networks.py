"""CycleGAN networks as seed 004 modified them, for CT -> pseudo-MRI.

- Generator: ResNet-style (Johnson et al.), but with only 2 residual blocks (the seed found
  2 best) and upsample-then-convolve on the way up against checkerboard artefacts (Odena
  et al. 2016); at most one transposed convolution is kept (the seed kept one for GPU
  memory). `transposed` says how many of the up-steps use it (0 or 1).
- Discriminators: 70x70 PatchGAN for each domain, and the seed's "denoising
  discriminator" on the MRI side, which learns real MRI from real MRI with Gaussian noise
  (and from the generator's output), so blurry, noisy-looking pseudo-MRI is penalised. It
  is a shallower PatchGAN (smaller patches: fine texture, not layout).
- InstanceNorm without running statistics (and no dropout): train and eval compute the
  same function, so what is validated is what is exported, at any image size. Not after
  the generators' first convolution (`absolute_input`): there it would subtract each
  slice's mean HU, and absolute HU are what identify tissue on CT.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from models.common.config import Config
from models.common.layers import ResidualBlock
from models.common.layers import instance_norm as _norm

# network options tried and removed (models/EXPERIMENTS.md: an input blur, soft bins of the
# input), with the values that had them off; a saved config holding those still loads
RETIRED_NET = {"input_blur": 0.0, "input_basis": [], "input_basis_width": None}


@dataclass(frozen=True)
class CycleNetConfig(Config):
    """Architecture options, saved with every checkpoint and in the model card."""

    RETIRED: ClassVar[dict] = RETIRED_NET

    ngf: int = 64
    ndf: int = 64
    n_down: int = 2
    n_blocks: int = 2  # seed 004: 2 residual blocks
    transposed: int = 1  # up-steps done by transposed conv (seed 004: one kept)
    d_layers: int = 3  # 70x70 PatchGAN
    dn_layers: int = 2  # denoising discriminator: 34x34 patches
    absolute_input: bool = True  # no norm after the generators' first conv (HU are absolute)
    long_skip: bool = False  # full-resolution features of the input also feed the last conv (not in the seed)

    def __post_init__(self) -> None:
        if not 0 <= self.transposed <= 1:
            raise ValueError("seed 004 keeps at most one transposed convolution")
        if self.transposed > self.n_down:
            raise ValueError("more transposed up-steps than up-steps")

    @property
    def spatial_multiple(self) -> int:
        return 2**self.n_down


class ResnetGenerator(nn.Module):
    """c7s1-ngf, n_down stride-2 convs, n_blocks residual blocks, n_down up-steps
    (the deepest `transposed` of them by transposed conv, the rest nearest-upsample + 3x3
    conv), c7s1-1 + tanh. Input sides must be multiples of 2^n_down.

    With `long_skip` (not in the seed) the first layer's full-resolution features are
    stacked with the last up-step's before the c7s1-1 layer, so boundaries a few pixels
    wide (lens, optic nerve, thyroid) need not survive the 4x-downsampled bottleneck: the
    bottleneck says which tissue, the skip says where its edge is."""

    def __init__(self, cfg: CycleNetConfig, in_ch: int = 1, out_ch: int = 1):
        super().__init__()
        ngf = cfg.ngf
        # No normalisation right after the first convolution when `absolute_input`: instance
        # norm of a linear filter of the raw input removes the slice's mean and scale, and for
        # CT the absolute Hounsfield value is the tissue information.
        first_norm: list[nn.Module] = [] if cfg.absolute_input else [_norm(ngf)]
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(in_ch, ngf, 7, bias=cfg.absolute_input),
                                   *first_norm, nn.ReLU(True)]
        ch = ngf
        for _ in range(cfg.n_down):
            layers += [nn.Conv2d(ch, ch * 2, 3, stride=2, padding=1, bias=False), _norm(ch * 2), nn.ReLU(True)]
            ch *= 2
        layers += [ResidualBlock(ch) for _ in range(cfg.n_blocks)]
        for i in range(cfg.n_down):
            if i < cfg.transposed:
                layers.append(nn.ConvTranspose2d(ch, ch // 2, 3, stride=2, padding=1, output_padding=1, bias=False))
            else:
                layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.ReflectionPad2d(1),
                           nn.Conv2d(ch, ch // 2, 3, bias=False)]
            layers += [_norm(ch // 2), nn.ReLU(True)]
            ch //= 2
        self.multiple = cfg.spatial_multiple
        self.long_skip = cfg.long_skip
        if not cfg.long_skip:
            layers += [nn.ReflectionPad2d(3), nn.Conv2d(ch, out_ch, 7), nn.Tanh()]
            self.model = nn.Sequential(*layers)
            return
        n_head = 3 + len(first_norm)
        self.head = nn.Sequential(*layers[:n_head])
        self.body = nn.Sequential(*layers[n_head:])
        self.tail = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(2 * ch, out_ch, 7), nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.long_skip:
            return self.model(x)
        h0 = self.head(x)
        return self.tail(torch.cat([self.body(h0), h0], 1))


def with_long_skip(state: dict[str, torch.Tensor], cfg: CycleNetConfig) -> dict[str, torch.Tensor]:
    """A plain generator's weights laid out for the same generator with `long_skip`, computing
    the same function: the last convolution's weights for the skipped features start at zero,
    so training from a learnt mapping adds where edges are without first losing the mapping."""
    plain = ResnetGenerator(dataclasses.replace(cfg, long_skip=False))
    plain.load_state_dict(state)
    skip = ResnetGenerator(dataclasses.replace(cfg, long_skip=True))
    layers = list(plain.model)  # ..., pad, conv, tanh: the tail is the last three
    for dst, src in zip([*skip.head, *skip.body], layers[:-3], strict=True):
        dst.load_state_dict(src.state_dict())
    old, new = layers[-2], skip.tail[1]
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, :old.in_channels] = old.weight
        new.bias.copy_(old.bias)
    return skip.state_dict()


class PatchDiscriminator(nn.Module):
    """Unconditional PatchGAN (LSGAN output, no sigmoid): `layers` stride-2 stages."""

    def __init__(self, ndf: int, layers: int = 3, in_ch: int = 1):
        super().__init__()
        seq: list[nn.Module] = [nn.Conv2d(in_ch, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, layers):
            prev, mult = mult, min(2**n, 8)
            seq += [nn.Conv2d(ndf * prev, ndf * mult, 4, 2, 1, bias=False), _norm(ndf * mult),
                    nn.LeakyReLU(0.2, True)]
        prev, mult = mult, min(2**layers, 8)
        seq += [nn.Conv2d(ndf * prev, ndf * mult, 4, 1, 1, bias=False), _norm(ndf * mult),
                nn.LeakyReLU(0.2, True), nn.Conv2d(ndf * mult, 1, 4, 1, 1)]
        self.model = nn.Sequential(*seq)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def count_transposed(net: nn.Module) -> int:
    return sum(isinstance(m, nn.ConvTranspose2d) for m in net.modules())


def receptive_field(layers: int) -> int:
    """Receptive field in pixels of a PatchGAN with `layers` stride-2 stages (3 -> 70)."""
    rf = 1
    for k, s in reversed([(4, 2)] * layers + [(4, 1), (4, 1)]):
        rf = (rf - 1) * s + k
    return rf
