"""The DCE phantom: deterministic by seed, physically ordered contrasts, split by subject,
and DICOM files with the breast protocol headers the rest of the service relies on."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pydicom
import pytest

from models.dce import physics as ph
from models.dce.phantom import generate_subject, split_of, split_seeds
from models.dce.phantom_dicom import write_phantom_series, write_phantom_study

SMALL = {"n_slices": 6, "size": 96, "slice_spacing_mm": 4.0}


def test_same_seed_same_subject_other_seed_differs() -> None:
    a = generate_subject(3000, **SMALL)
    b = generate_subject(3000, **SMALL)
    c = generate_subject(3001, **SMALL)
    np.testing.assert_array_equal(a.t1, b.t1)
    np.testing.assert_array_equal(a.dce1, b.dce1)
    assert a.info == b.info
    assert not np.array_equal(a.t1, c.t1)
    assert a.t1.shape == a.dce1.shape == (6, 96, 96) and a.t1.dtype == np.float32
    assert a.pixel_spacing_mm == pytest.approx(4.0)  # FOV 384 mm on 96 pixels


def test_splits_are_disjoint_by_seed() -> None:
    tr, va, te = (set(split_seeds(s, 50)) for s in ("train", "val", "test"))
    assert not (tr & va or tr & te or va & te)
    assert {split_of(s) for s in tr} == {"train"} and split_of(3049) == "test"
    with pytest.raises(ValueError):
        split_seeds("holdout", 3)


def test_spgr_contrasts_follow_t1_and_fat_suppression() -> None:
    sig = lambda t, seq, c=0.0: float(ph.spgr_signal(t.pd, ph.t1_with_gd(t.t1_ms, c), t.t2s_ms, seq))  # noqa: E731
    # Non-FS T1: fat (short T1) is brighter than fibroglandular tissue and muscle.
    assert sig(ph.FAT, ph.T1_FLASH_NONFS) > 2 * sig(ph.FIBROGLANDULAR, ph.T1_FLASH_NONFS)
    # Gadolinium shortens T1: 1 mM in blood more than triples the VIBE signal.
    assert sig(ph.BLOOD, ph.VIBE_SPAIR_DCE, 1.0) > 3 * sig(ph.BLOOD, ph.VIBE_SPAIR_DCE)


def test_lesion_kinetic_ranges_give_their_curve_types() -> None:
    for kind, k in ph.LESION_KINETICS.items():
        for ve, kep, vp in itertools.product(k["ve"], k["kep"], k["vp"]):
            assert ph.curve_type(ve * kep, ve, vp) == kind


def test_parker_aif_peaks_at_first_pass() -> None:
    t = np.linspace(0, 5, 501)
    c = ph.parker_aif(t)
    assert 0.12 < t[np.argmax(c)] < 0.22 and 5 < c.max() < 7  # mM, Parker 2006 figure 1
    assert c[0] < 0.1 and 0.3 < c[-1] < 0.6  # tail: ~0.45 mM at 5 min


def test_phantom_tissues_are_where_physics_puts_them() -> None:
    s = generate_subject(3002, n_slices=12, size=128, slice_spacing_mm=3.0)
    body, ves = s.body_mask, s.vessel_mask
    assert 0.2 < body.mean() < 0.7
    air_t1 = s.t1[:, :8, :8].mean()
    assert s.t1[body].mean() > 10 * air_t1  # body far above the noise floor
    # Vessels: dark-ish before contrast, among the brightest structures after.
    rank_after = (s.dce1[ves].mean() > np.percentile(s.dce1[body], 90))
    assert ves.any() and rank_after
    assert s.dce1[ves].mean() / s.dce1[body].mean() > 2 * s.t1[ves].mean() / s.t1[body].mean()


def test_enhancing_lesions_enhance() -> None:
    for seed in range(3000, 3020):
        s = generate_subject(seed, n_slices=16, size=128, slice_spacing_mm=3.0)
        if s.lesion_mask.sum() > 20:
            break
    else:
        pytest.fail("no phantom test subject among 20 has a visible enhancing lesion")
    les, body = s.lesion_mask, s.body_mask
    before = s.t1[les].mean() / s.t1[body].mean()
    after = s.dce1[les].mean() / s.dce1[body].mean()
    assert after > 2 * before


def test_dicom_series_headers_and_pixels(tmp_path: Path) -> None:
    written = write_phantom_study(tmp_path, 3003, n_slices=4, size=64)
    t1 = [pydicom.dcmread(p) for p in written["t1"]]
    dce = [pydicom.dcmread(p) for p in written["dce1"]]
    a, b = t1[0], dce[0]
    assert a.SOPClassUID == "1.2.840.10008.5.1.4.1.1.4"  # MR Image Storage
    assert (a.Manufacturer, a.SeriesDescription, a.ScanningSequence, a.SequenceVariant,
            a.ScanOptions) == ("SIEMENS", "t1_fl3d_tra_nonfs", "GR", "SP", "")
    assert (float(a.RepetitionTime), float(a.EchoTime), float(a.FlipAngle)) == (5.43, 2.46, 20.0)
    assert (a.MagneticFieldStrength, a.BodyPartExamined, a.PatientPosition) == (3, "BREAST", "FFP")
    assert [float(v) for v in a.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    assert a.ImagesInAcquisition == 4 and float(a.SliceThickness) == 1.0
    assert "spair" in b.SeriesDescription and b.ContrastBolusAgent
    assert a.StudyInstanceUID == b.StudyInstanceUID
    assert a.FrameOfReferenceUID == b.FrameOfReferenceUID
    assert a.SeriesInstanceUID != b.SeriesInstanceUID
    z = [float(d.ImagePositionPatient[2]) for d in t1]
    assert np.allclose(np.diff(z), 1.0) and [d.InstanceNumber for d in t1] == [1, 2, 3, 4]
    assert len({d.SOPInstanceUID for d in t1 + dce}) == 8
    px = a.pixel_array
    assert px.dtype == np.uint16 and px.shape == (64, 64) and 0 < px.max() <= 4095
    # Same seed, same UIDs (a re-run writes the same study).
    again = write_phantom_series(tmp_path / "again", 3003, 4, 64, which="t1")
    assert pydicom.dcmread(again[0]).SOPInstanceUID == a.SOPInstanceUID
    with pytest.raises(ValueError):
        write_phantom_series(tmp_path, 3003, 4, 64, which="t2")
