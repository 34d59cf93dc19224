"""Pairing a non-contrast T1 with the first post-contrast phase: by headers, by position,
resampled when grids differ, refused (with the reason) when frames or coverage differ."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import Dataset

from models.dce.pairs import (
    NON_CONTRAST,
    OTHER,
    POST_CONTRAST,
    build_pairs,
    is_fat_suppressed,
    series_role,
)
from models.dce.phantom import generate_subject
from models.dce.phantom_dicom import series_headers, write_phantom_study


def _write(out: Path, headers: list[Dataset], volume: np.ndarray, tag: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, ds in enumerate(headers):
        ds = copy.deepcopy(ds)
        ds.Rows, ds.Columns = volume.shape[1:]
        ds.PixelData = np.clip(volume[k], 0, 4095).astype(np.uint16).tobytes()
        p = out / f"{tag}{k:03d}.dcm"
        ds.save_as(p, enforce_file_format=True)
        paths.append(p)
    return paths


@pytest.fixture(scope="module")
def subject():
    return generate_subject(3004, n_slices=8, size=64, slice_spacing_mm=1.0)


def test_phantom_study_pairs_slice_for_slice(tmp_path: Path, subject) -> None:
    write_phantom_study(tmp_path / "in", 3004, n_slices=8, size=64)
    (res,) = build_pairs([tmp_path / "in"], tmp_path / "out")
    assert res.refused is None, res.refused
    assert not res.resampled and res.n_slices == 8
    assert res.source_description == "t1_fl3d_tra_nonfs" and "spair" in res.target_description
    with np.load(res.npz) as z:
        np.testing.assert_array_equal(z["source"], np.clip(np.rint(subject.t1), 0, 4095))
        np.testing.assert_array_equal(z["target"], np.clip(np.rint(subject.dce1), 0, 4095))
    assert (tmp_path / "out" / f"{res.study_uid}.json").is_file()


def test_different_frame_of_reference_is_refused(tmp_path: Path, subject) -> None:
    t1 = series_headers(subject, which="t1")
    dce = series_headers(subject, which="dce1")
    for ds in dce:
        ds.FrameOfReferenceUID = "1.2.3.4.5"
    _write(tmp_path / "in", t1, subject.t1, "a")
    _write(tmp_path / "in", dce, subject.dce1, "b")
    (res,) = build_pairs([tmp_path / "in"], tmp_path / "out")
    assert res.refused and "FrameOfReferenceUID" in res.refused
    assert not (tmp_path / "out").exists()


def test_partial_coverage_is_refused(tmp_path: Path, subject) -> None:
    t1 = series_headers(subject, which="t1")
    dce = series_headers(subject, which="dce1")[:3]
    _write(tmp_path / "in", t1, subject.t1, "a")
    _write(tmp_path / "in", dce, subject.dce1[:3], "b")
    (res,) = build_pairs([tmp_path / "in"], None)
    assert res.refused and "coverage" in res.refused


def test_tilted_target_is_refused(tmp_path: Path, subject) -> None:
    t1 = series_headers(subject, which="t1")
    dce = series_headers(subject, which="dce1")
    a = np.deg2rad(10)
    for ds in dce:
        ds.ImageOrientationPatient = [1, 0, 0, 0, float(np.cos(a)), float(np.sin(a))]
    _write(tmp_path / "in", t1, subject.t1, "a")
    _write(tmp_path / "in", dce, subject.dce1, "b")
    (res,) = build_pairs([tmp_path / "in"], None)
    assert res.refused and "orientation" in res.refused


def test_different_grid_is_resampled_exactly_for_a_linear_image(tmp_path: Path, subject) -> None:
    """Target: half the in-plane resolution, slices offset by half a gap, values a linear
    function of patient position, so trilinear resampling must reproduce it exactly."""
    t1 = series_headers(subject, which="t1")
    dce = series_headers(subject, which="dce1")
    f = lambda x, y, z: 1000 + 2.0 * x + 1.0 * y + 20.0 * z  # noqa: E731
    tgt_vol = np.zeros((9, 48, 48), np.float32)
    px_t = 384.0 / 48 * 0.75  # 6 mm: FOV 288 mm, fully inside the source's 384 mm
    for k, ds in enumerate(dce + [copy.deepcopy(dce[-1])]):
        z = float(subject.z_mm[0]) - 0.5 + k
        ds.ImagePositionPatient = [-143.0, -143.0, z]
        ds.PixelSpacing = [px_t, px_t]
        ds.InstanceNumber = k + 1
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        yy, xx = np.mgrid[:48, :48]
        tgt_vol[k] = f(-143.0 + xx * px_t, -143.0 + yy * px_t, z)
        if k == len(dce):
            dce.append(ds)
    _write(tmp_path / "in", t1, subject.t1, "a")
    _write(tmp_path / "in", dce, tgt_vol, "b")
    (res,) = build_pairs([tmp_path / "in"], tmp_path / "out", min_overlap=0.8)
    assert res.refused is None, res.refused
    assert res.resampled and res.n_slices == 8
    with np.load(res.npz) as z:
        target = z["target"]
    px_s = subject.pixel_spacing_mm
    x0 = -(64 - 1) / 2 * px_s
    yy, xx = np.mgrid[:64, :64]
    xs, ys = x0 + xx * px_s, x0 + yy * px_s
    inside = (xs > -140) & (xs < 139) & (ys > -140) & (ys < 139)
    for k in range(8):
        want = f(xs, ys, float(subject.z_mm[k]))
        # stored target values were rounded to integers, hence 1 unit of tolerance
        np.testing.assert_allclose(target[k][inside], want[inside], atol=1.0)


def test_multi_phase_series_takes_the_second_temporal_position(tmp_path: Path, subject) -> None:
    t1 = series_headers(subject, which="t1")
    dce = series_headers(subject, which="dce1")
    phases, vols = [], []
    for phase in (1, 2, 3):
        for k, ds in enumerate(dce):
            d = copy.deepcopy(ds)
            d.TemporalPositionIdentifier = phase
            d.SOPInstanceUID = pydicom.uid.generate_uid()
            d.file_meta.MediaStorageSOPInstanceUID = d.SOPInstanceUID
            d.InstanceNumber = (phase - 1) * len(dce) + k + 1
            phases.append(d)
            vols.append(np.full((64, 64), 100.0 * phase, np.float32))
    _write(tmp_path / "in", t1, subject.t1, "a")
    _write(tmp_path / "in", phases, np.stack(vols), "b")
    (res,) = build_pairs([tmp_path / "in"], tmp_path / "out")
    assert res.refused is None and res.n_slices == 8
    with np.load(res.npz) as z:
        assert np.all(z["target"] == 200.0)


def test_study_without_post_contrast_is_refused(tmp_path: Path, subject) -> None:
    _write(tmp_path / "in", series_headers(subject, which="t1"), subject.t1, "a")
    (res,) = build_pairs([tmp_path / "in"], None)
    assert res.refused and "post-contrast" in res.refused


@pytest.mark.parametrize(("rel", "role"), [
    ("pydicom_data/MR-SIEMENS-DICOM-WithOverlays.dcm", OTHER),  # post-gad VIBE, but an MPR
    ("heudiconv/phantom.dcm", OTHER),  # a gradient-echo scout
    ("nibabel/siemens_dwi_0.dcm", OTHER),  # EPI diffusion
    ("nibabel/decimal_rescale.dcm", OTHER),  # a qT1 map
    ("pydicom_data/MR2_UNCR.dcm", OTHER),  # spin echo
])
def test_roles_of_real_scanner_headers(realdata: Path, rel: str, role: str) -> None:
    ds = pydicom.dcmread(realdata / rel, stop_before_pixels=True)
    assert series_role(ds)[0] == role


def test_roles_and_fat_suppression_from_real_and_phantom_headers(realdata: Path, subject) -> None:
    vibe = pydicom.dcmread(realdata / "pydicom_data/MR-SIEMENS-DICOM-WithOverlays.dcm",
                           stop_before_pixels=True)
    assert is_fat_suppressed(vibe)  # ScanOptions SAT2\FS
    t1 = series_headers(subject, which="t1")[0]
    dce = series_headers(subject, which="dce1")[0]
    assert series_role(t1)[0] == NON_CONTRAST and series_role(dce)[0] == POST_CONTRAST
    undocumented = copy.deepcopy(vibe)  # the same VIBE as an original acquisition
    undocumented.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
    undocumented.SeriesDescription = "t1_vibe_fs_tra_dyn"
    assert series_role(undocumented)[0] == POST_CONTRAST


def test_classifier_roles_pair_the_phantom_study_too(tmp_path: Path) -> None:
    from models.dce.pairs import classifier_roles

    write_phantom_study(tmp_path / "in", 3004, n_slices=4, size=64)
    (res,) = build_pairs([tmp_path / "in"], None, role_fn=classifier_roles)
    assert res.refused is None, (res.refused, res.notes)
    assert res.source_description == "t1_fl3d_tra_nonfs" and "spair" in res.target_description
    assert any("classifier: breast_t1_nc" in n for n in res.notes)


def test_separate_mask_series_is_not_taken_for_phase_one(tmp_path: Path, subject) -> None:
    """DCE stored as one series per phase, the mask already carrying the agent's name."""
    _write(tmp_path / "in", series_headers(subject, which="t1"), subject.t1, "a")
    for n, (desc, minute) in enumerate([("t1_fl3d_dyn_spair_pre", 0), ("t1_fl3d_dyn_spair_ph1", 2),
                                        ("t1_fl3d_dyn_spair_ph2", 4)]):
        hdrs = series_headers(subject, which="dce1")
        uid = pydicom.uid.generate_uid()
        for ds in hdrs:
            ds.SeriesDescription = desc
            ds.SeriesInstanceUID = uid
            ds.SeriesNumber = 10 + n
            ds.AcquisitionTime = f"0910{minute:02d}.000000"
            ds.SOPInstanceUID = pydicom.uid.generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        _write(tmp_path / "in", hdrs, np.full_like(subject.dce1, 100.0 * (n + 1)), f"s{n}_")
    (res,) = build_pairs([tmp_path / "in"], tmp_path / "out")
    assert res.refused is None and res.target_description == "t1_fl3d_dyn_spair_ph1"
    with np.load(res.npz) as z:
        assert np.all(z["target"] == 200.0)
