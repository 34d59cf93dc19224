"""Every family's phantom as one labelled series with its scanner-like headers: what the
series classifier learns the siblings' series from (`models.classifier.phantom`), so no
family imports another. Each returns (volume float32 (N, H, W), headers, source module),
or None when that family's code is not installed."""

from __future__ import annotations

import numpy as np
from pydicom import Dataset

Series = tuple[np.ndarray, list[Dataset], str]


def dce_series(label: str, seed: int, split: str, n: int) -> Series | None:
    """A subject of the DCE physics phantom: the T1 non-FS (`breast_t1_nc`) or the first
    post-contrast phase, 128 x 128, 3 mm slices; `seed` modulo 1000 within the split."""
    try:
        from models.dce.phantom import SPLIT_BASE, generate_subject
        from models.dce.phantom_dicom import series_headers
    except ImportError:
        return None
    subject = generate_subject(SPLIT_BASE[split] + seed % 1000, n_slices=n, size=128, slice_spacing_mm=3.0)
    which = "t1" if label == "breast_t1_nc" else "dce1"
    volume = (subject.t1 if which == "t1" else subject.dce1).astype(np.float32)
    return volume, series_headers(subject, which=which), "models.dce.phantom"


def sibling_series(label: str, seed: int, split: str, n: int) -> Series | None:
    """A brain (`brain_<contrast>`) or CT (`ct_head_neck`, else abdomen) phantom subject,
    n slices of 128 x 128, with the headers their end-to-end tests and demos send."""
    try:
        if label.startswith("brain_"):
            from models.brain.phantom import SPLIT_BASE as BRAIN_SPLITS
            from models.brain.phantom import generate_subject
            from models.brain.phantom_dicom import brain_headers

            contrast = label[len("brain_"):]
            subject = generate_subject(BRAIN_SPLITS[split] + seed % 1000, n_slices=n, size=128)
            return (subject.images[contrast].astype(np.float32), brain_headers(subject, contrast),
                    "models.brain.phantom")
        from models.ct.phantom import SPLIT_BASE as CT_SPLITS
        from models.ct.phantom import generate_subject as generate_ct
        from models.ct.phantom_dicom import ct_headers

        region = "head_neck" if label == "ct_head_neck" else "abdomen"
        subject = generate_ct(CT_SPLITS[split] + seed % 1000, region=region, n_slices=n, size=128)
        return subject.ct.astype(np.float32), ct_headers(subject), "models.ct.phantom"
    except ImportError:
        return None
