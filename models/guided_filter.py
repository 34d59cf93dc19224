"""A joint bilateral filter guided by the network's own input, exported after a generator:
its settings (`GuidedFilter`), a NumPy version for the evaluations' reference rows, and the
command-line options that choose it. Torch-free; the exported module is
`models.ct.networks.GuidedSmoothing`."""

from __future__ import annotations

import argparse
import math
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class GuidedFilter:
    """A joint bilateral filter of a synthesized image guided by the image it came from (not
    in the seeds; no weights): each pixel becomes the mean of its (2 radius + 1)^2
    neighbours, weighted by distance (Gaussian, `sigma_px`) and by how close the neighbour's
    input value is to its own (Gaussian, `sigma_range`, in the network's input units; for
    the pseudo-MRI's CT curve 0.1 is ~11 HU in soft tissue). Flat tissue comes out flat
    instead of a GAN's blotches and noise, and every boundary stays where the input has it:
    for the pseudo-MRI that is seed 004's point, the CT's frame."""

    radius: int = 3
    sigma_px: float = 2.0
    sigma_range: float = 0.1

    def __post_init__(self) -> None:
        if self.radius < 1 or self.sigma_px <= 0 or self.sigma_range <= 0:
            raise ValueError(f"a guided filter needs radius >= 1 and positive sigmas: {self}")

    def to_dict(self) -> dict:
        return {"kind": "joint_bilateral", "guide": "the network's input (normalised)", **asdict(self)}

    @classmethod
    def from_card(cls, card_filter: dict | None) -> GuidedFilter | None:
        """A model card's `post_filter` block (None: none)."""
        if not card_filter:
            return None
        return cls(int(card_filter["radius"]), float(card_filter["sigma_px"]), float(card_filter["sigma_range"]))

    def offsets(self) -> list[tuple[int, int, float]]:
        """(dy, dx, spatial weight) of every neighbour, the centre included (weight 1)."""
        r = self.radius
        return [(dy, dx, math.exp(-(dy * dy + dx * dx) / (2.0 * self.sigma_px**2)))
                for dy in range(-r, r + 1) for dx in range(-r, r + 1)]

    def smooth(self, image: np.ndarray, guide: np.ndarray) -> np.ndarray:
        """The filter on (N, H, W) arrays, as the exported graph computes it, to pass a
        baseline through the same filter a model ends with."""
        r, (h, w) = self.radius, image.shape[-2:]
        pad = ((0, 0), (r, r), (r, r))
        img = np.pad(image.astype(np.float32), pad, mode="reflect")
        gd = np.pad(guide.astype(np.float32), pad, mode="reflect")
        num, den = np.zeros((len(image), h, w), np.float32), np.zeros((len(image), h, w), np.float32)
        for dy, dx, ws in self.offsets():
            win = (slice(None), slice(r + dy, r + dy + h), slice(r + dx, r + dx + w))
            wt = ws * np.exp(-0.5 * (gd[win] - gd[:, r:r + h, r:r + w]) ** 2 / self.sigma_range**2)
            num += wt * img[win]
            den += wt
        return num / den

    def limitation(self, input_name: str) -> str:
        """What the filter costs, for a model card's limitations."""
        side = 2 * self.radius + 1
        return (f" The output is smoothed by a filter guided by the {input_name}: a boundary the "
                f"{input_name} does not show (a synthetic enhancement, an MR-only interface) is "
                f"smoothed over up to {side}x{side} pixels.")


def add_post_filter_argument(p: argparse.ArgumentParser, default: GuidedFilter | None) -> None:
    """`--post-filter RADIUS SIGMA_PX SIGMA_RANGE` / `--no-post-filter` (see `GuidedFilter`)."""
    d = "none" if default is None else f"{default.radius} {default.sigma_px:g} {default.sigma_range:g}"
    p.add_argument("--post-filter", nargs=3, type=float, metavar=("RADIUS", "SIGMA_PX", "SIGMA_RANGE"),
                   default=None if default is None else [default.radius, default.sigma_px, default.sigma_range],
                   help=f"input-guided joint bilateral filter exported after the network (default: {d})")
    p.add_argument("--no-post-filter", dest="post_filter", action="store_const", const=None)


def post_filter_from(values: list[float] | None) -> GuidedFilter | None:
    if values is None:
        return None
    radius, sigma_px, sigma_range = values
    if radius != int(radius):
        raise ValueError(f"the filter's radius is a whole number of pixels, not {radius}")
    return GuidedFilter(int(radius), float(sigma_px), float(sigma_range))


def post_filter_flags(post_filter: GuidedFilter | None, default: GuidedFilter | None) -> str:
    """The command-line flags that choose `post_filter` when the default is `default`."""
    if post_filter == default:
        return ""
    if post_filter is None:
        return " --no-post-filter"
    return f" --post-filter {post_filter.radius} {post_filter.sigma_px:g} {post_filter.sigma_range:g}"
