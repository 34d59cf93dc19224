"""Seed 002's conditional multi-contrast networks: one encoder that maps any contrast to a
contrast-independent semantic code, one decoder that renders the code in the contrast a
one-hot condition asks for (the condition is tiled over the code and stacked with it, as
the seed stacks the code with the condition vector), and a PatchGAN discriminator with an
adversarial head and a contrast-class head (the seed's d and c outputs).

Translation from any contrast to any other is decode(encode(x), onehot(target)).
`ConditionalTranslator` wraps both halves into the one graph that is exported, with two
inputs: `input` (N, 1, H, W) and `condition` (N, C).

InstanceNorm without running statistics (StarGAN's track_running_stats=True breaks
dynamic-shape export and changes outputs between train and eval), no dropout inside the
networks (the seed's input dropout is applied by the training loop only), upsample-then-
convolve on the way up.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from models.ct.networks import ResidualBlock


@dataclass(frozen=True)
class BrainNetConfig:
    """Architecture options, saved with every checkpoint and in the model card."""

    n_contrasts: int = 4
    ngf: int = 16
    ndf: int = 16
    n_down: int = 2
    enc_blocks: int = 2
    dec_blocks: int = 2
    d_layers: int = 3

    @property
    def spatial_multiple(self) -> int:
        return 2**self.n_down

    @property
    def code_channels(self) -> int:
        return self.ngf * 2**self.n_down

    def to_dict(self) -> dict:
        return asdict(self)


def _norm(ch: int) -> nn.Module:
    return nn.InstanceNorm2d(ch, affine=False, track_running_stats=False)


class Encoder(nn.Module):
    """Image (N, 1, H, W) -> semantic code (N, code_channels, H/2^n, W/2^n)."""

    def __init__(self, cfg: BrainNetConfig):
        super().__init__()
        ch = cfg.ngf
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(1, ch, 7, bias=False), _norm(ch), nn.ReLU(True)]
        for _ in range(cfg.n_down):
            layers += [nn.Conv2d(ch, ch * 2, 3, stride=2, padding=1, bias=False), _norm(ch * 2), nn.ReLU(True)]
            ch *= 2
        layers += [ResidualBlock(ch) for _ in range(cfg.enc_blocks)]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class Decoder(nn.Module):
    """Code + one-hot condition (tiled) -> image in [-1, 1] of the conditioned contrast."""

    def __init__(self, cfg: BrainNetConfig):
        super().__init__()
        ch = cfg.code_channels
        layers: list[nn.Module] = [nn.Conv2d(ch + cfg.n_contrasts, ch, 3, padding=1, bias=False), _norm(ch),
                                   nn.ReLU(True)]
        layers += [ResidualBlock(ch) for _ in range(cfg.dec_blocks)]
        for _ in range(cfg.n_down):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.ReflectionPad2d(1),
                       nn.Conv2d(ch, ch // 2, 3, bias=False), _norm(ch // 2), nn.ReLU(True)]
            ch //= 2
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ch, 1, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, code: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        tiled = condition[:, :, None, None].expand(-1, -1, code.shape[2], code.shape[3])
        return self.model(torch.cat([code, tiled], 1))


class ConditionalTranslator(nn.Module):
    """The exported graph: any contrast in, the contrast `condition` names out."""

    def __init__(self, cfg: BrainNetConfig):
        super().__init__()
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.multiple = cfg.spatial_multiple

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x), condition)


class ContrastDiscriminator(nn.Module):
    """PatchGAN trunk with an adversarial map (LSGAN) and a per-image class vector (the
    class map averaged over patches), as the seed's D gives d and c."""

    def __init__(self, cfg: BrainNetConfig):
        super().__init__()
        ndf = cfg.ndf
        seq: list[nn.Module] = [nn.Conv2d(1, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, cfg.d_layers):
            prev, mult = mult, min(2**n, 8)
            seq += [nn.Conv2d(ndf * prev, ndf * mult, 4, 2, 1, bias=False), _norm(ndf * mult), nn.LeakyReLU(0.2, True)]
        self.trunk = nn.Sequential(*seq)
        self.adv = nn.Conv2d(ndf * mult, 1, 4, 1, 1)
        self.cls = nn.Conv2d(ndf * mult, cfg.n_contrasts, 4, 1, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(x)
        return self.adv(h), self.cls(h).mean(dim=(2, 3))
