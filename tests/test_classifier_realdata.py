"""Retraining the pixel classifier on a hospital's own labelled series (issue 4: "and on
real data when a user has it"): the folder layout, its errors, and one tiny training run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from models.brain.phantom_dicom import write_brain_series
from models.classifier.realdata import load_labelled_folder


def _labelled(root, seeds=(961, 962, 963)):
    for seed in seeds:
        for contrast in ("t1", "flair"):
            write_brain_series(root / f"brain_{contrast}" / f"s{seed}", seed=seed, n_slices=5, size=64,
                               contrast=contrast)
    return root


def test_folder_per_class_is_read_like_the_service_reads_it(tmp_path):
    root = _labelled(tmp_path / "labelled")
    (root / "brain_t1" / "notes.txt").write_text("not DICOM")  # ignored, not an error
    s = load_labelled_folder(root, val_share=0.34)
    assert s.counts == {"brain_flair": 3, "brain_t1": 3}
    x_tr, y_tr, _ = s.train
    x_va, y_va, _ = s.val
    assert len(y_tr) + len(y_va) == 6 * 3  # 3 representative slices (30-70 %) of 5
    assert x_tr.shape[1:] == (2, 128, 128) and x_tr.dtype == np.float16
    # the split follows the series UID, so it does not move when the folder grows
    again = load_labelled_folder(root, val_share=0.34)
    assert np.array_equal(again.val[1], s.val[1])


def test_wrong_folder_names_and_empty_folders_are_clear_errors(tmp_path):
    (tmp_path / "t2_axial").mkdir()
    with pytest.raises(ValueError, match="not class names; valid: breast_t1_nc"):
        load_labelled_folder(tmp_path)
    empty = tmp_path / "empty"
    (empty / "brain_t1").mkdir(parents=True)
    with pytest.raises(ValueError, match="no readable image series"):
        load_labelled_folder(empty)


@pytest.mark.slow
def test_training_with_real_series_records_them_in_the_card(tmp_path):
    pytest.importorskip("torch")
    from models.classifier.train import TrainConfig, train

    root = _labelled(tmp_path / "labelled", seeds=(961,))
    cfg = TrainConfig(per_class=1, val_per_class=1, epochs=1, workers=1, threads=1, real=str(root), real_repeat=2)
    card = train(cfg, tmp_path / "out", tmp_path / "run")
    assert card["training_data"]["real_series_per_class"] == {"brain_flair": 1, "brain_t1": 1}
    on_disk = json.loads((tmp_path / "out" / "series_classifier.card.json").read_text())
    assert on_disk["sha256"] == card["sha256"] and "2 real series" in on_disk["limitations"]
    assert card["export_parity_max_abs"] < 1e-4
