"""Pix2Pix networks (Isola et al. 2017) as seed 000 used them: a U-Net generator and a
70x70 PatchGAN discriminator.

Two deliberate differences from pytorch-CycleGAN-and-pix2pix's `unet_256`:
- the number of down-steps is a parameter; 384 = 3·2^7, so 7 down-steps run on the seed's
  native 384x384 slices (8 would need 256·k);
- InstanceNorm without running statistics and no dropout, so the network computes the
  same function in train and eval mode: what is validated is what is exported.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models.common.config import Config
from models.common.layers import instance_norm as _norm


@dataclass(frozen=True)
class NetConfig(Config):
    """Architecture options, saved with every checkpoint and in the model card."""

    in_channels: int = 1
    out_channels: int = 1
    ngf: int = 64
    ndf: int = 64
    num_downs: int = 7
    max_mult: int = 8  # channel cap: ngf * max_mult, as in pix2pix
    d_layers: int = 3  # 3 -> 70x70 receptive field

    @property
    def spatial_multiple(self) -> int:
        return 2**self.num_downs




class UnetBlock(nn.Module):
    """One level: down-conv, the inner levels, up-conv, concatenated with the skip."""

    def __init__(self, outer: int, inner: int, in_ch: int | None = None,
                 sub: nn.Module | None = None, outermost: bool = False, innermost: bool = False):
        super().__init__()
        self.outermost = outermost
        in_ch = in_ch if in_ch is not None else outer
        down = nn.Conv2d(in_ch, inner, 4, stride=2, padding=1, bias=False)
        if outermost:
            up = nn.ConvTranspose2d(inner * 2, outer, 4, stride=2, padding=1)
            layers = [down, sub, nn.ReLU(True), up, nn.Tanh()]
        elif innermost:  # no norm at the 1x1..3x3 bottleneck (statistics of a few pixels)
            up = nn.ConvTranspose2d(inner, outer, 4, stride=2, padding=1, bias=False)
            layers = [nn.LeakyReLU(0.2, True), down, nn.ReLU(True), up, _norm(outer)]
        else:
            up = nn.ConvTranspose2d(inner * 2, outer, 4, stride=2, padding=1, bias=False)
            layers = [nn.LeakyReLU(0.2, True), down, _norm(inner), sub, nn.ReLU(True), up,
                      _norm(outer)]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.outermost:
            return self.model(x)
        return torch.cat([x, self.model(x)], 1)


class UnetGenerator(nn.Module):
    """U-Net with `num_downs` stride-2 levels; input sides must be multiples of 2^num_downs."""

    def __init__(self, cfg: NetConfig):
        super().__init__()
        if cfg.num_downs < 2:
            raise ValueError("num_downs must be >= 2")
        ngf, cap = cfg.ngf, cfg.ngf * cfg.max_mult
        chans = [min(ngf * 2**i, cap) for i in range(cfg.num_downs)]
        block = UnetBlock(chans[-2], chans[-1], innermost=True)
        for i in range(cfg.num_downs - 2, 0, -1):
            block = UnetBlock(chans[i - 1], chans[i], sub=block)
        self.model = UnetBlock(cfg.out_channels, ngf, in_ch=cfg.in_channels, sub=block,
                               outermost=True)
        self.multiple = cfg.spatial_multiple

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class PatchDiscriminator(nn.Module):
    """PatchGAN: with d_layers=3 each output logit sees a 70x70 patch of (input, image)."""

    def __init__(self, cfg: NetConfig):
        super().__init__()
        ndf = cfg.ndf
        layers: list[nn.Module] = [
            nn.Conv2d(cfg.in_channels + cfg.out_channels, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, cfg.d_layers):
            prev, mult = mult, min(2**n, 8)
            layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, 2, 1, bias=False), _norm(ndf * mult),
                       nn.LeakyReLU(0.2, True)]
        prev, mult = mult, min(2**cfg.d_layers, 8)
        layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, 1, 1, bias=False), _norm(ndf * mult),
                   nn.LeakyReLU(0.2, True), nn.Conv2d(ndf * mult, 1, 4, 1, 1)]
        self.model = nn.Sequential(*layers)

    def forward(self, cond: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return self.model(torch.cat([cond, image], 1))


def receptive_field(cfg: NetConfig) -> int:
    """Receptive field of the PatchGAN in pixels (70 for d_layers=3)."""
    rf = 1
    for k, s in reversed([(4, 2)] * cfg.d_layers + [(4, 1), (4, 1)]):
        rf = (rf - 1) * s + k
    return rf
