"""Seed 002's training-free structure map (Algorithm 1) and brain mask (Algorithm 2).

Algorithm 1: Sobel gradients (vertical and horizontal) of an image n;
    f1 = reduce_min(sobel(n)),  f2 = reduce_max(sobel(n))   (over the two directions)
    f1 = mean(f1) - f1,         f2 = f2 - mean(f2)           (mean-centred)
    f1 = f1 > beta,             f2 = f2 > beta               (thresholded)
    f  = (f1 + f2) > 0                                        (OR-ed)
Algorithm 2: mask = 1 - (n > 0) (background), resized to (H + p, W + p) and centre-cropped
back to (H, W), so the background mask shrinks by about p/2 pixels at the head's edge.

Images are in [-1, 1] here (per-slice min-max), so "n > 0" of the seed's standardised
images becomes n > `level` (default -0.9: 5 % of the range above the background).
`structure_map_soft` is the differentiable twin used in the structure-reconstruction loss
(a sigmoid instead of the hard threshold); the hard numpy version is the seed's.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

SOBEL_Y = np.array([[-1, -2, -1], [0, 0, 0], [1, 2, 1]], np.float32)
SOBEL_X = SOBEL_Y.T.copy()
BETA = 0.5  # on [-1, 1] images: a 0.125 step gives a Sobel response of 0.5


def sobel(img: np.ndarray) -> np.ndarray:
    """(H, W) -> (2, H, W): vertical and horizontal Sobel responses (edge-replicated border)."""
    p = np.pad(np.asarray(img, np.float32), 1, mode="edge")
    h, w = img.shape
    out = np.zeros((2, h, w), np.float32)
    for k, kern in enumerate((SOBEL_Y, SOBEL_X)):
        for i in range(3):
            for j in range(3):
                if kern[i, j]:
                    out[k] += kern[i, j] * p[i:i + h, j:j + w]
    return out


def structure_map(img: np.ndarray, beta: float = BETA) -> np.ndarray:
    """Algorithm 1 on one (H, W) image: a binary float32 edge map."""
    g = sobel(img)
    f1, f2 = g.min(axis=0), g.max(axis=0)
    f1 = f1.mean() - f1
    f2 = f2 - f2.mean()
    return ((f1 > beta) | (f2 > beta)).astype(np.float32)


def brain_mask(img: np.ndarray, p: int = 4, level: float = -0.9) -> np.ndarray:
    """Algorithm 2 on one (H, W) image: 1 = background (outside the expanded head)."""
    h, w = img.shape
    mask = 1.0 - (np.asarray(img) > level).astype(np.float32)
    # resize to (h + p, w + p) (nearest), then crop the centre (h, w)
    ys = np.clip(np.floor((np.arange(h + p) + 0.5) * h / (h + p)).astype(int), 0, h - 1)
    xs = np.clip(np.floor((np.arange(w + p) + 0.5) * w / (w + p)).astype(int), 0, w - 1)
    big = mask[ys][:, xs]
    y0, x0 = p // 2, p // 2
    return big[y0:y0 + h, x0:x0 + w].copy()


def _sobel_torch(x: torch.Tensor) -> torch.Tensor:
    k = torch.from_numpy(np.stack([SOBEL_Y, SOBEL_X])[:, None]).to(x)
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k)


def structure_map_soft(x: torch.Tensor, beta: float = BETA, tau: float = 0.1) -> torch.Tensor:
    """Algorithm 1 on (N, 1, H, W) with sigmoids for the thresholds and a soft OR."""
    g = _sobel_torch(x)
    f1 = g.min(dim=1, keepdim=True).values
    f2 = g.max(dim=1, keepdim=True).values
    f1 = f1.mean(dim=(2, 3), keepdim=True) - f1
    f2 = f2 - f2.mean(dim=(2, 3), keepdim=True)
    s1, s2 = torch.sigmoid((f1 - beta) / tau), torch.sigmoid((f2 - beta) / tau)
    return 1.0 - (1.0 - s1) * (1.0 - s2)


def structure_map_torch(x: torch.Tensor, beta: float = BETA) -> torch.Tensor:
    """The hard Algorithm 1 on (N, 1, H, W) (same result as `structure_map` per image)."""
    g = _sobel_torch(x)
    f1 = g.min(dim=1, keepdim=True).values
    f2 = g.max(dim=1, keepdim=True).values
    f1 = f1.mean(dim=(2, 3), keepdim=True) - f1
    f2 = f2 - f2.mean(dim=(2, 3), keepdim=True)
    return ((f1 > beta) | (f2 > beta)).to(x.dtype)
