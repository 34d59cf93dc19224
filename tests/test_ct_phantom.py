"""CT/MRI phantom (seed 004 data stand-in): one anatomy, two contrasts that disagree the way
patients' do, masks in the CT's frame, seeded and split by subject; DICOM that the series
classifier routes to pseudo_mri."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread

from dicom_synth.classify import classify_series
from dicom_synth.series import load_series
from models.ct.phantom import ORGANS, L, generate_subject, split_of, split_seeds
from models.ct.phantom_dicom import write_ct_series


def test_same_seed_same_subject_and_splits_disjoint() -> None:
    a = generate_subject(43000, "abdomen", n_slices=3, size=64)
    b = generate_subject(43000, "abdomen", n_slices=3, size=64)
    c = generate_subject(43001, "abdomen", n_slices=3, size=64)
    np.testing.assert_array_equal(a.ct, b.ct)
    np.testing.assert_array_equal(a.mr, b.mr)
    assert not np.array_equal(a.ct, c.ct)
    seeds = {s: set(split_seeds(s, 50)) for s in ("train", "val", "test")}
    assert not (seeds["train"] & seeds["val"]) and not (seeds["train"] & seeds["test"])
    assert {split_of(s) for s in seeds["test"]} == {"test"}


@pytest.mark.parametrize("region", ["abdomen", "head_neck"])
def test_ct_is_in_hounsfield_units_and_mri_has_soft_tissue_contrast(region: str) -> None:
    s = generate_subject(43002, region, n_slices=24, size=96)
    lab = s.labels
    assert s.ct.shape == s.mr.shape == lab.shape == (24, 96, 96)
    air = lab == L["air"]
    assert abs(float(np.median(s.ct[air])) + 1000) < 30
    fat = lab == L["fat"]
    assert -130 < float(np.median(s.ct[fat])) < -70
    assert float(np.median(s.ct[lab == L["bone"]])) > 700
    # fat: dark on CT, bright on T2; muscle the other way round
    assert np.median(s.mr[fat]) > 2.5 * np.median(s.mr[lab == L["muscle"]])
    fluid = L["urine"] if region == "abdomen" else L["vitreous"]
    assert np.median(s.mr[lab == fluid]) > 0.85
    # every organ scored for structure is present somewhere and masks match the labels
    for organ, tissues in ORGANS[region].items():
        mask = s.organ_masks()[organ]
        assert mask.sum() > 50, organ
        inside = np.isin(lab, [L[t] for t in tissues])
        assert (mask & inside).sum() / mask.sum() > 0.75  # boundary ties go to the other label


def test_soft_tissues_alike_on_ct_differ_on_mri() -> None:
    s = generate_subject(43003, "abdomen", n_slices=12, size=128)
    med = {t: (float(np.median(s.ct[s.labels == L[t]])), float(np.median(s.mr[s.labels == L[t]])))
           for t in ("liver", "spleen", "kidney") if (s.labels == L[t]).any()}
    hus = [v[0] for v in med.values()]
    t2s = [v[1] for v in med.values()]
    assert max(hus) - min(hus) < 45
    assert max(t2s) / min(t2s) > 1.6


@pytest.mark.parametrize(("region", "label"), [("abdomen", "ct_abdomen_pelvis"), ("head_neck", "ct_head_neck")])
def test_ct_dicom_is_classified_and_routed(tmp_path: Path, region: str, label: str) -> None:
    paths = write_ct_series(tmp_path, 43004, n_slices=8, size=128, region=region)
    ds = dcmread(paths[0])
    assert ds.Modality == "CT" and ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
    assert float(ds.RescaleIntercept) == -1024 and ds.BodyPartExamined
    series = load_series(paths)
    assert series.volume is not None and float(series.volume.min()) < -900  # rescale applied: HU
    result = classify_series(series.slices, series.volume)
    assert (result.label, result.route) == (label, "pseudo_mri")
