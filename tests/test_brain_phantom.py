"""Brain phantom (seed 002 data stand-in): four registered contrasts from tissue
parameters, each with the appearance its sequence gives; DICOM that the classifier routes
to brain_contrasts with the right label."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from dicom_synth.classify import classify_series
from dicom_synth.series import load_series
from models.brain.phantom import CONTRASTS, L, generate_subject, split_seeds
from models.brain.phantom_dicom import write_brain_series


def _median(s, contrast: str, tissue: str) -> float:
    """Median over the tissue's core (one pixel in from its edges: no partial volume)."""
    m = s.labels == L[tissue]
    core = np.stack([ndimage.binary_erosion(k) for k in m])
    return float(np.median(s.images[contrast][core if core.sum() > 20 else m]))


def test_contrasts_follow_their_sequences() -> None:
    s = next(generate_subject(seed, n_slices=10, size=96) for seed in split_seeds("test", 20)
             if generate_subject(seed, n_slices=2, size=32).info["tumour"])
    m = {c: {t: _median(s, c, t) for t in ("wm", "gm", "csf")} for c in CONTRASTS}
    assert m["t1"]["wm"] > m["t1"]["gm"] > m["t1"]["csf"]  # T1: CSF dark, WM brightest
    assert m["t2"]["csf"] > m["t2"]["gm"] > m["t2"]["wm"]  # T2: fluid bright
    assert m["flair"]["csf"] < 0.3 * m["flair"]["gm"]  # FLAIR: fluid nulled
    if (s.labels == L["rim"]).sum() > 10:
        assert _median(s, "t1c", "rim") > 1.5 * _median(s, "t1", "rim") * (
            m["t1c"]["wm"] / m["t1"]["wm"])  # the rim enhances
    if (s.labels == L["oedema"]).sum() > 10:
        assert _median(s, "flair", "oedema") > 1.2 * m["flair"]["gm"]
    assert all(v.shape == s.labels.shape for v in s.images.values())


def test_seeded() -> None:
    a, b = generate_subject(51000, n_slices=2, size=32), generate_subject(51000, n_slices=2, size=32)
    for c in CONTRASTS:
        np.testing.assert_array_equal(a.images[c], b.images[c])


@pytest.mark.parametrize("contrast", CONTRASTS)
def test_brain_dicom_is_classified_and_routed(tmp_path: Path, contrast: str) -> None:
    paths = write_brain_series(tmp_path, 53001, n_slices=8, size=128, contrast=contrast)
    series = load_series(paths)
    result = classify_series(series.slices, series.volume)
    assert (result.label, result.route) == (f"brain_{contrast}", "brain_contrasts")
