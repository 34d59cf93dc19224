"""Domain guard (issue 13, item 3): every model card records its training domain; a series
outside it is named with what differs, and the classifier's pixels on such a series never
veto confident headers (item 1)."""

from __future__ import annotations

import copy

import numpy as np
import pydicom
import pytest

from dicom_synth.classify import classify_series
from dicom_synth.classify.fusion import decide
from dicom_synth.domainguard import (
    RETRAIN_HINT,
    assess,
    fit_reference,
    guard,
    orientation_of,
    series_score,
)
from dicom_synth.multicontrast import load_synthesis_model
from dicom_synth.registry import ModelCard, load_card
from dicom_synth.series import LoadedSeries, load_series
from models.brain.phantom import generate_subject
from models.brain.phantom_dicom import brain_headers, write_brain_series
from models.classifier.phantom import make_series
from models.ct.phantom_dicom import write_ct_series
from tests.conftest import REALDATA


def test_orientation_from_image_orientation_patient():
    assert orientation_of([1, 0, 0, 0, 1, 0]) == "axial"
    assert orientation_of([0, 1, 0, 0, 0, -1]) == "sagittal"
    assert orientation_of([1, 0, 0, 0, 0, -1]) == "coronal"
    assert orientation_of([0.7071, 0.7071, 0, 0, 0, -1]) == "oblique"
    assert orientation_of(None) == "unknown" and orientation_of(["x"] * 6) == "unknown"


def test_reference_score_is_about_one_on_its_own_distribution():
    rng = np.random.default_rng(0)
    mix = rng.normal(size=(24, 24))
    draw = lambda n, shift=0.0: rng.normal(size=(n, 24)) @ mix + shift  # noqa: E731
    ref = fit_reference([draw(400)])
    same = [series_score(ref, draw(8)) for _ in range(20)]
    assert 0.6 < np.median(same) < 1.6
    assert series_score(ref, draw(8, shift=15.0)) > 5 * max(same)


def test_card_without_domain_is_not_assessed():
    card = ModelCard.from_dict({**load_card("brain_contrasts", verify=False).to_dict(), "domain": None})
    verdict = assess(card, LoadedSeries([pydicom.Dataset()], [], [None], np.zeros((1, 8, 8), np.float32)))
    assert verdict.in_domain and not verdict.assessed


# ------------------------------------------------------------------ the committed cards
@pytest.fixture(scope="module")
def brain():
    card = load_card("brain_contrasts")
    if not card.extra.get("domain"):
        pytest.skip("brain_contrasts card has no domain block yet")
    return card, load_synthesis_model(card, providers=["CPUExecutionProvider"], threads=1)


@pytest.fixture(scope="module")
def brain_t1(tmp_path_factory) -> LoadedSeries:
    """A test-split brain phantom T1, 12 slices of 128 x 128: the model's own domain."""
    return load_series(write_brain_series(tmp_path_factory.mktemp("t1"), 53001, n_slices=12, size=128, contrast="t1"))


def _with(series: LoadedSeries, **attrs) -> LoadedSeries:
    slices = [copy.deepcopy(ds) for ds in series.slices]
    for ds in slices:
        for key, value in attrs.items():
            setattr(ds, key, value)
    return LoadedSeries(slices, [], [None] * len(slices), series.volume)


def test_every_card_records_its_domain_and_passes_its_validation_data():
    for task in ("series_classification", "dce_phase1", "brain_contrasts", "pseudo_mri"):
        domain = load_card(task).extra.get("domain")
        assert domain, task
        assert domain["calibration"]["pass_rate"] >= 0.99 and domain["calibration"]["series"] >= 50, task
        assert domain["features"]["threshold"] > 0 and domain["orientation"] == ["axial"], task


def test_in_domain_phantom_passes(brain, brain_t1):
    card, model = brain
    outcome = guard(card, model, brain_t1, "refuse", source_label="brain_t1")
    assert outcome.proceed and outcome.verdict.in_domain, outcome.verdict
    assert outcome.verdict.score <= outcome.verdict.threshold and not outcome.verdict.differences


def test_sagittal_reslice_is_refused_with_the_reason(brain, tmp_path):
    """The same phantom head cut sagittally: 128 images of 64 x 128 (z up, y across)."""
    card, model = brain
    axial = load_series(write_brain_series(tmp_path, 53002, n_slices=64, size=128, contrast="t1"))
    head = axial.slices[0]
    z_step = abs(float(axial.slices[1].ImagePositionPatient[2]) - float(head.ImagePositionPatient[2]))
    sag = np.ascontiguousarray(np.transpose(axial.volume[::-1], (2, 0, 1)))  # (x, z, y)
    slices = []
    for _ in range(sag.shape[0]):
        ds = copy.deepcopy(head)
        ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
        ds.Rows, ds.Columns = sag.shape[1], sag.shape[2]
        ds.PixelSpacing = [round(z_step, 4), float(head.PixelSpacing[1])]
        slices.append(ds)
    outcome = guard(card, model, LoadedSeries(slices, [], [None] * len(slices), sag), "refuse", source_label="brain_t1")
    assert not outcome.proceed and "sagittal; trained on axial" in outcome.verdict.differences
    assert RETRAIN_HINT in outcome.reason and "threshold" in outcome.reason


def test_odd_pixel_spacing_is_refused(brain, brain_t1):
    card, model = brain
    outcome = guard(card, model, _with(brain_t1, PixelSpacing=[0.4, 0.4]), "refuse", source_label="brain_t1")
    assert not outcome.proceed
    assert "pixel spacing 0.4 mm; trained on 1.7-1.8 mm" in outcome.verdict.differences, outcome.verdict.differences


def test_other_modality_is_refused(brain, tmp_path):
    card, model = brain
    ct = load_series(write_ct_series(tmp_path, 43001, n_slices=6, size=128, region="head_neck"))
    verdict = guard(card, model, ct, "refuse").verdict
    assert not verdict.in_domain and "modality CT; trained on MR" in verdict.differences


def test_warn_lets_it_through_with_a_note_and_off_does_not_look(brain, brain_t1):
    card, model = brain
    odd = _with(brain_t1, PixelSpacing=[0.4, 0.4])
    warned = guard(card, model, odd, "warn", source_label="brain_t1")
    assert warned.proceed and warned.notes and "outside the model's training domain" in warned.notes[0]
    assert warned.evidence("warn")["in_domain"] is False and warned.evidence("warn")["warning"] == warned.notes[0]
    off = guard(card, model, odd, "off")
    assert off.proceed and off.verdict is None and not off.notes


# ------------------------------------------------------------------ classifier fusion
_HEADER_TAGS = ("SeriesDescription", "ProtocolName", "SequenceName", "ScanningSequence", "SequenceVariant",
                "ScanOptions", "RepetitionTime", "EchoTime", "FlipAngle", "BodyPartExamined",
                "MagneticFieldStrength", "Manufacturer", "ImageType", "EchoTrainLength", "StudyDescription")


def _real_mr_with_brain_t1_headers():
    """The real Philips T1 SE (1024 x 1024 at 0.2 mm, near-sagittal) under the header protocol of
    an axial brain T1 SE: headers sure it is brain_t1, pixels from a scanner the network
    never saw."""
    ds = pydicom.dcmread(REALDATA / "pydicom_data/MR2_UNCR.dcm")
    volume = ds.pixel_array[None].astype(np.float32)
    template = brain_headers(generate_subject(53000, n_slices=2, size=64), "t1")[0]
    for tag in _HEADER_TAGS:
        if tag in template:
            setattr(ds, tag, copy.deepcopy(getattr(template, tag)))
        elif tag in ds:
            delattr(ds, tag)
    del ds.PixelData
    return ds, volume


def test_out_of_domain_real_mr_with_confident_headers_is_not_vetoed():
    if not load_card("series_classification").extra.get("domain"):
        pytest.skip("classifier card has no domain block yet")
    ds, volume = _real_mr_with_brain_t1_headers()
    result = classify_series([ds], volume)
    ev = result.evidence
    assert result.label == "brain_t1", ev
    assert ev["pixel_domain"]["in_domain"] is False and not ev["pixel_model_used"]
    assert any(d.startswith("pixel spacing 0.2 mm") for d in ev["pixel_domain"]["differences"])
    assert "pixels ignored" in ev["reason"] and ev["pixel_probabilities"]  # recorded, not used
    # What the fusion would have said had the pixels counted: the veto of issue 13.
    would = decide(ev["header_probabilities"], ev["pixel_probabilities"])
    if max(ev["pixel_probabilities"], key=ev["pixel_probabilities"].get) != "brain_t1":
        assert would.label == "unknown" and would.reason.startswith("headers say brain_t1")


def test_in_domain_phantom_keeps_the_pixel_vote():
    if not load_card("series_classification").extra.get("domain"):
        pytest.skip("classifier card has no domain block yet")
    s = make_series("brain_flair", 300007, n_slices=3, split="test")
    result = classify_series(s.headers, s.volume)
    assert result.evidence["pixel_domain"]["in_domain"] is True, result.evidence["pixel_domain"]
    assert result.evidence["pixel_model_used"] is True
