"""Supersampled tissue-label drawing for the CT/MRI and brain phantoms.

Anatomy is a list of labelled ellipsoids in millimetres (DICOM LPS: x to the patient's
left = image right, y posterior = image down, z head-wards), painted in order on a label
map at `supersample` x the output resolution. Rendering a table of per-label values and
averaging each supersample block gives partial volume at every boundary, and the same
label map gives the organ masks, so images and masks of one anatomy agree exactly.

Pure numpy: the service's tests write phantom DICOM without torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np


@dataclass(frozen=True)
class Ellipsoid:
    """A labelled ellipsoid; its slice at z is an ellipse scaled by sqrt(1 - t²).

    `wobble` holds (k, amplitude, phase) harmonics of the radius, so organs are not
    perfect ellipses. `keep` clips the shape to one side of its centre ("anterior":
    y < cy, "posterior": y > cy, "left"/"right" in image columns), for U-shaped bones.
    `prism` makes it a cylinder along z (constant section between cz ± rz)."""

    label: int
    cx: float
    cy: float
    cz: float
    rx: float
    ry: float
    rz: float
    angle: float = 0.0
    wobble: tuple[tuple[int, float, float], ...] = ()
    keep: str = ""
    prism: bool = False

    def section(self, z: float) -> float:
        """Scale of the ellipse at z (0 when the slice misses it)."""
        t = (z - self.cz) / self.rz
        if abs(t) >= 1.0:
            return 0.0
        return 1.0 if self.prism else float(np.sqrt(1.0 - t * t))


def random_wobble(rng: np.random.Generator, amount: float, kmax: int = 5) -> tuple[tuple[int, float, float], ...]:
    """Smooth radius harmonics 2..kmax with decreasing amplitudes."""
    return tuple((k, float(rng.uniform(0, amount) / (k - 1)), float(rng.uniform(0, 2 * np.pi)))
                 for k in range(2, kmax + 1))


def _ellipse_mask(shape: Ellipsoid, s: float,
                  c: np.ndarray) -> tuple[tuple[slice, slice], np.ndarray | None]:
    """The pixels of `shape`'s section (scale s) inside its bounding box."""
    rx, ry = shape.rx * s, shape.ry * s
    amp = sum(a for _, a, _ in shape.wobble)
    reach = max(rx, ry) * (1 + amp) + 1.0
    i0, i1 = np.searchsorted(c, [shape.cy - reach, shape.cy + reach])
    j0, j1 = np.searchsorted(c, [shape.cx - reach, shape.cx + reach])
    box = (slice(int(i0), int(i1)), slice(int(j0), int(j1)))
    if i1 <= i0 or j1 <= j0:
        return box, None
    dx = c[None, j0:j1] - shape.cx
    dy = c[i0:i1, None] - shape.cy
    ca, sa = np.float32(np.cos(shape.angle)), np.float32(np.sin(shape.angle))
    u = (dx * ca + dy * sa) / rx
    v = (-dx * sa + dy * ca) / ry
    rho2 = u * u + v * v
    inside = rho2 <= 1.0
    if shape.wobble:  # harmonics only matter in the band the radius can wobble through
        inside = rho2 <= (1.0 - amp) ** 2
        band = (rho2 > (1.0 - amp) ** 2) & (rho2 <= (1.0 + amp) ** 2)
        theta = np.arctan2(v[band], u[band])  # u, v are (H, W): (1, W) and (H, 1) terms summed
        limit = 1.0 + sum(a * np.cos(k * theta + p) for k, a, p in shape.wobble)
        inside[band] = rho2[band] <= limit * limit
    if shape.keep == "anterior":
        inside &= dy <= 0
    elif shape.keep == "posterior":
        inside &= dy >= 0
    elif shape.keep == "left":
        inside &= dx <= 0
    elif shape.keep == "right":
        inside &= dx >= 0
    return box, inside


@lru_cache(maxsize=512)
def _prism_mask(shape: Ellipsoid, size: int, fov: float,
                ss: int) -> tuple[tuple[slice, slice], np.ndarray | None]:
    n = size * ss
    c = ((np.arange(n, dtype=np.float32) - (n - 1) / 2) * fov / n).astype(np.float32)
    return _ellipse_mask(shape, 1.0, c)


class Canvas:
    """A label map at `supersample` x resolution over a square field of view."""

    def __init__(self, size: int, fov_mm: float, supersample: int = 2):
        self.size, self.fov, self.ss = int(size), float(fov_mm), int(supersample)
        n = self.size * self.ss
        c = ((np.arange(n, dtype=np.float32) - (n - 1) / 2) * self.fov / n).astype(np.float32)
        self.coord = c
        self.labels = np.zeros((n, n), np.int16)

    @property
    def pixel_mm(self) -> float:
        return self.fov / self.size

    def draw(self, shape: Ellipsoid, z: float) -> None:
        s = shape.section(z)
        if s <= 0:
            return
        if shape.prism:  # the same section at every z: computed once per canvas geometry
            box, inside = _prism_mask(shape, self.size, self.fov, self.ss)
        else:
            box, inside = _ellipse_mask(shape, s, self.coord)
        if inside is not None:
            self.labels[box][inside] = shape.label

    def draw_all(self, shapes: Sequence[Ellipsoid], z: float) -> None:
        for sh in shapes:
            self.draw(sh, z)

    def _blocks(self, a: np.ndarray) -> np.ndarray:
        s = self.ss
        out = sum(a[i::s, j::s] for i in range(s) for j in range(s))
        return out / np.float32(s * s)

    def render(self, values: np.ndarray) -> np.ndarray:
        """Per-label values (indexed by label) -> partial-volume image at output size."""
        return self._blocks(np.asarray(values, np.float32)[self.labels]).astype(np.float32)

    def fraction(self, labels: Sequence[int]) -> np.ndarray:
        """Fraction of each output pixel covered by any of `labels`."""
        return self._blocks(np.isin(self.labels, labels).astype(np.float32))

    def majority(self) -> np.ndarray:
        """The label covering most of each output pixel (ties: the lower label index)."""
        s = self.ss
        subs = [self.labels[i::s, j::s] for i in range(s) for j in range(s)]
        best = subs[0].copy()
        best_n = np.zeros(best.shape, np.int8)
        for cand in np.unique(self.labels):
            n = sum((sub == cand).astype(np.int8) for sub in subs)
            better = n > best_n
            best[better] = cand
            best_n[better] = n[better]
        return best


def smooth_field(rng: np.random.Generator, size: int, amplitude: float, cells: int = 4) -> np.ndarray:
    """A smooth multiplicative field 1 ± amplitude (coil bias), bilinear from a coarse grid."""
    coarse = rng.uniform(-1, 1, (cells, cells)).astype(np.float32)
    t = np.linspace(0, cells - 1, size, dtype=np.float32)
    i0 = np.clip(t.astype(int), 0, cells - 2)
    f = t - i0
    rows = coarse[i0] * (1 - f)[:, None] + coarse[i0 + 1] * f[:, None]
    full = rows[:, i0] * (1 - f)[None, :] + rows[:, i0 + 1] * f[None, :]
    return (1.0 + amplitude * full).astype(np.float32)


def gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur (numpy only; reflect padding)."""
    if sigma <= 0:
        return img
    r = max(1, int(3 * sigma + 0.5))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2).astype(np.float32)
    k /= k.sum()
    pad = np.pad(img, r, mode="reflect")
    tmp = sum(k[i] * pad[:, i:i + img.shape[1]] for i in range(2 * r + 1))
    return sum(k[i] * tmp[i:i + img.shape[0], :] for i in range(2 * r + 1)).astype(np.float32)
