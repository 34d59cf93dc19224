"""Seed 002's Algorithm 1 (structure map) and Algorithm 2 (brain mask), and the soft twin
of Algorithm 1 used in the structure loss."""

from __future__ import annotations

import numpy as np
import torch

from dicom_synth.intensity import normalise_slices
from models.brain.phantom import CONTRASTS, L, generate_subject
from models.common.structure import brain_mask, sobel, structure_map, structure_map_soft, structure_map_torch


def _square(val: float = 1.0) -> np.ndarray:
    img = np.full((32, 32), -1.0, np.float32)
    img[8:24, 8:24] = val
    return img


def test_sobel_and_structure_map_mark_the_edges_only() -> None:
    img = _square()
    g = sobel(img)
    assert g.shape == (2, 32, 32) and g[0, 7, 16] > 0 and g[0, 16, 16] == 0
    f = structure_map(img)
    assert f.dtype == np.float32 and set(np.unique(f)) <= {0.0, 1.0}
    assert f[16, 16] == 0 and f[2, 2] == 0  # flat inside and outside
    assert f[7, 16] == 1 and f[16, 8] == 1 and f[24, 16] == 1  # the square's border
    assert structure_map(_square(-0.99)).sum() == 0  # below beta: no structure


def test_torch_versions_match_numpy() -> None:
    s = generate_subject(53002, n_slices=2, size=64)
    img = normalise_slices(s.images["t2"][1])
    hard = structure_map_torch(torch.from_numpy(img)[None, None])[0, 0].numpy()
    np.testing.assert_array_equal(hard, structure_map(img))
    soft = structure_map_soft(torch.from_numpy(img)[None, None])[0, 0].numpy()
    assert np.mean(np.abs(soft - hard)) < 0.05


def test_structure_is_shared_by_registered_contrasts() -> None:
    s = generate_subject(53003, n_slices=3, size=96)
    maps = {c: structure_map(normalise_slices(s.images[c][1])) for c in CONTRASTS}
    # the head outline is an edge in every contrast; contrasts agree far more than chance
    a, b = maps["t1"], maps["t2"]
    overlap = (a * b).sum() / min(a.sum(), b.sum())
    chance = a.mean() * b.mean() * a.size / min(a.sum(), b.sum())
    assert overlap > 3 * chance


def test_brain_mask_is_background_shrunk_by_p() -> None:
    s = generate_subject(53004, n_slices=1, size=96)
    img = normalise_slices(s.images["t1"][0])
    m0, m8 = brain_mask(img, p=0), brain_mask(img, p=8)
    head = s.labels[0] != L["air"]
    assert m0[0, 0] == 1 and m0[48, 48] == 0
    assert (m0[head] == 0).mean() > 0.8  # mostly inside = not background
    assert m8.sum() < m0.sum()  # the expanded head leaves less background
