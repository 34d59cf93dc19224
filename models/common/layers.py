"""Network pieces more than one family uses: instance norm without running statistics,
the normal(0, 0.02) initialisation of pix2pix and CycleGAN, the residual block, and the
input-guided post filter that goes into an exported graph."""

from __future__ import annotations

import torch
from torch import nn

from models.guided_filter import GuidedFilter


def instance_norm(ch: int) -> nn.Module:
    """InstanceNorm without running statistics: train and eval compute the same function."""
    return nn.InstanceNorm2d(ch, affine=False, track_running_stats=False)


def init_weights(net: nn.Module, gain: float = 0.02) -> None:
    """pix2pix's and CycleGAN's normal(0, 0.02) initialisation."""
    for m in net.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
            nn.init.normal_(m.weight, 0.0, gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class ResidualBlock(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(ch, ch, 3, bias=False), instance_norm(ch), nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(ch, ch, 3, bias=False), instance_norm(ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class GuidedSmoothing(nn.Module):
    """`GuidedFilter` as a module: (image, guide) -> filtered image, both (N, 1, H, W), any
    size (reflect padding); part of the exported graph (`GuidedFilter.smooth` is the same in
    NumPy)."""

    def __init__(self, spec: GuidedFilter):
        super().__init__()
        self.spec = spec
        self.pad = nn.ReflectionPad2d(spec.radius)

    def forward(self, image: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
        r, h, w = self.spec.radius, image.shape[-2], image.shape[-1]
        img, gd = self.pad(image), self.pad(guide)
        scale = -0.5 / self.spec.sigma_range**2
        num = torch.zeros_like(image)
        den = torch.zeros_like(image)
        for dy, dx, ws in self.spec.offsets():
            g = gd[:, :, r + dy:r + dy + h, r + dx:r + dx + w]
            wt = ws * torch.exp(scale * (g - guide) ** 2)
            num = num + wt * img[:, :, r + dy:r + dy + h, r + dx:r + dx + w]
            den = den + wt
        return num / den  # den >= 1: the centre pixel weighs 1


class FilteredNetwork(nn.Module):
    """A network followed by `GuidedSmoothing` guided by its own first input (the CT, or the
    brain's source contrast): what is exported when a card names a `post_filter`. It takes
    the same inputs as the network."""

    def __init__(self, network: nn.Module, spec: GuidedFilter):
        super().__init__()
        self.network = network
        self.smoothing = GuidedSmoothing(spec)

    def forward(self, x: torch.Tensor, *conditions: torch.Tensor | None) -> torch.Tensor:
        return self.smoothing(self.network(x, *conditions), x)


def with_post_filter(network: nn.Module, spec: GuidedFilter | None) -> nn.Module:
    """The network, followed by the input-guided filter when there is one: what goes to ONNX."""
    return network if spec is None else FilteredNetwork(network, spec)
