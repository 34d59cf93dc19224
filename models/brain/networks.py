"""Seed 002's conditional multi-contrast networks: one encoder that maps any contrast to a
contrast-independent semantic code, one decoder that renders the code in the contrast a
one-hot condition asks for (the condition is tiled over the code and stacked with it, as
the seed stacks the code with the condition vector, and it also scales and shifts every
normalisation of the decoder, see `ConditionalNorm`), and a PatchGAN discriminator with
an adversarial head and a contrast-class head (the seed's d and c outputs).

Translation from any contrast to any other is decode(encode(x), onehot(target)).
`ConditionalTranslator` wraps both halves into the one graph that is exported, with two
inputs: `input` (N, 1, H, W) and `condition` (N, C).

InstanceNorm without running statistics (StarGAN's track_running_stats=True breaks
dynamic-shape export and changes outputs between train and eval), no dropout inside the
networks (the seed's input dropout is applied by the training loop only), upsample-then-
convolve on the way up.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models.common.config import Config
from models.common.layers import ResidualBlock
from models.common.layers import instance_norm as _norm


@dataclass(frozen=True)
class BrainNetConfig(Config):
    """Architecture options, saved with every checkpoint and in the model card."""

    n_contrasts: int = 4
    ngf: int = 16
    ndf: int = 16
    n_down: int = 2
    enc_blocks: int = 2
    dec_blocks: int = 2
    d_layers: int = 3
    skips: bool = True  # U-Net skips from encoder to decoder (not in the seed's figure)
    input_gate: bool = False  # out = g*input + (1-g)*decoded, g per pixel (not in the seed, see Decoder)
    # The gate also knows the source contrast: a learnt bias per (source, target) pair, so it
    # can open for T1 -> T1c and stay as it is for FLAIR -> T1c (the graph takes a `source` one-hot).
    gate_source: bool = False

    @property
    def spatial_multiple(self) -> int:
        return 2**self.n_down

    @property
    def code_channels(self) -> int:
        return self.ngf * 2**self.n_down




class Encoder(nn.Module):
    """Image (N, 1, H, W) -> semantic code (N, code_channels, H/2^n, W/2^n), plus the
    features of each resolution on the way down (the decoder's skip inputs)."""

    def __init__(self, cfg: BrainNetConfig):
        super().__init__()
        ch = cfg.ngf
        self.stem = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(1, ch, 7, bias=False), _norm(ch), nn.ReLU(True))
        downs = []
        for _ in range(cfg.n_down):
            downs.append(nn.Sequential(nn.Conv2d(ch, ch * 2, 3, stride=2, padding=1, bias=False), _norm(ch * 2),
                                       nn.ReLU(True)))
            ch *= 2
        self.downs = nn.ModuleList(downs)
        self.blocks = nn.Sequential(*[ResidualBlock(ch) for _ in range(cfg.enc_blocks)])

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        h = self.stem(x)
        skips = [h]
        for down in self.downs:
            h = down(h)
            skips.append(h)
        return self.blocks(h), skips[:-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode(x)[0]


class ConditionalNorm(nn.Module):
    """Instance norm followed by a scale and shift chosen by the condition (Dumoulin et al.
    2017). Needed because a condition stacked as constant channels is a per-channel offset
    after the next convolution, which instance norm subtracts again: without this the
    decoder cannot see which contrast it is asked for."""

    def __init__(self, ch: int, n_cond: int):
        super().__init__()
        self.norm = _norm(ch)
        self.gamma = nn.Linear(n_cond, ch)
        self.beta = nn.Linear(n_cond, ch)
        nn.init.zeros_(self.gamma.weight)
        nn.init.zeros_(self.gamma.bias)
        nn.init.zeros_(self.beta.weight)
        nn.init.zeros_(self.beta.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.norm(x) * (1 + self.gamma(cond)[:, :, None, None]) + self.beta(cond)[:, :, None, None]


class CondResidualBlock(nn.Module):
    def __init__(self, ch: int, n_cond: int):
        super().__init__()
        self.pad1, self.conv1 = nn.ReflectionPad2d(1), nn.Conv2d(ch, ch, 3, bias=False)
        self.norm1 = ConditionalNorm(ch, n_cond)
        self.pad2, self.conv2 = nn.ReflectionPad2d(1), nn.Conv2d(ch, ch, 3, bias=False)
        self.norm2 = ConditionalNorm(ch, n_cond)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.norm1(self.conv1(self.pad1(x)), cond))
        return x + self.norm2(self.conv2(self.pad2(h)), cond)


class Decoder(nn.Module):
    """Code + condition -> image in [-1, 1] of the conditioned contrast. The condition is
    stacked with the code as tiled channels (the seed) and also sets the scale and shift of
    every normalisation (`ConditionalNorm`). With `skips` (the encoder's features at each
    resolution, U-Net style) the fine structure of the input need not pass the bottleneck.

    With `input_gate` a last convolution also predicts a per-pixel gate g in (0, 1) and the
    output is g * input + (1 - g) * decoded: where the target contrast equals the input up to
    a few structures (T1 -> T1c: only enhancing tissue changes), the input's own pixels,
    noise and detail pass through instead of being re-drawn by a narrow decoder. Not in the
    seed; initialised nearly closed (g ~ 0.02), so a network trained without it starts from
    where it was. With `gate_source` the gate's logit also gets a learnt bias for the
    (source, target) pair (zero at first: the same function)."""

    def __init__(self, cfg: BrainNetConfig):
        super().__init__()
        ch, n = cfg.code_channels, cfg.n_contrasts
        self.use_skips = cfg.skips
        self.inp = nn.Conv2d(ch + n, ch, 3, padding=1, bias=False)
        self.inp_norm = ConditionalNorm(ch, n)
        self.blocks = nn.ModuleList([CondResidualBlock(ch, n) for _ in range(cfg.dec_blocks)])
        ups, fuse, norms = [], [], []
        for _ in range(cfg.n_down):
            ups.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.ReflectionPad2d(1),
                                     nn.Conv2d(ch, ch // 2, 3, bias=False)))
            fuse.append(nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(ch, ch // 2, 3, bias=False))
                        if cfg.skips else nn.Identity())
            norms.append(ConditionalNorm(ch // 2, n))
            ch //= 2
        self.ups, self.fuse, self.up_norms = nn.ModuleList(ups), nn.ModuleList(fuse), nn.ModuleList(norms)
        self.out = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(ch, 1, 7), nn.Tanh())
        self.gate = None
        if cfg.input_gate:
            self.gate = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(ch, 1, 3))
            nn.init.zeros_(self.gate[1].weight)
            nn.init.constant_(self.gate[1].bias, -4.0)
        self.gate_pair = nn.Parameter(torch.zeros(n, n)) if cfg.input_gate and cfg.gate_source else None

    def forward(self, code: torch.Tensor, condition: torch.Tensor,
                skips: list[torch.Tensor] | None = None, source: torch.Tensor | None = None,
                with_gate: bool = False, source_condition: torch.Tensor | None = None,
                with_decoded: bool = False) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """`source`: the image the code was encoded from (needed with `input_gate`);
        `source_condition`: its contrast, one-hot (needed with `gate_source`).
        `with_gate`: also return the gate (None without one), for a training term on it;
        `with_decoded` (with `with_gate`): and the decoder's own image before the gate mixes
        in the input, for a training term on that."""
        tiled = condition[:, :, None, None].expand(-1, -1, code.shape[2], code.shape[3])
        h = torch.relu(self.inp_norm(self.inp(torch.cat([code, tiled], 1)), condition))
        for block in self.blocks:
            h = block(h, condition)
        for i, (up, fuse, norm) in enumerate(zip(self.ups, self.fuse, self.up_norms, strict=True)):
            h = up(h)
            if self.use_skips:
                if skips is None:
                    raise ValueError("this decoder was built with skip connections: pass the encoder's skips")
                h = fuse(torch.cat([h, skips[-1 - i]], 1))
            h = torch.relu(norm(h, condition))
        y = self.out(h)
        if self.gate is None:
            return ((y, None, y) if with_decoded else (y, None)) if with_gate else y
        if source is None:
            raise ValueError("this decoder was built with an input gate: pass the source image")
        logit = self.gate(h)
        if self.gate_pair is not None:
            if source_condition is None:
                raise ValueError("this decoder's gate knows the source contrast: pass source_condition")
            logit = logit + ((source_condition @ self.gate_pair) * condition).sum(1)[:, None, None, None]
        g = torch.sigmoid(logit)
        out = g * source + (1 - g) * y
        return ((out, g, y) if with_decoded else (out, g)) if with_gate else out


class ConditionalTranslator(nn.Module):
    """The exported graph: any contrast in, the contrast `condition` names out."""

    def __init__(self, cfg: BrainNetConfig):
        super().__init__()
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.multiple = cfg.spatial_multiple

    def forward(self, x: torch.Tensor, condition: torch.Tensor,
                source_condition: torch.Tensor | None = None) -> torch.Tensor:
        code, skips = self.encoder.encode(x)
        return self.decoder(code, condition, skips, x, source_condition=source_condition)


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

