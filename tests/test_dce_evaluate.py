"""Evaluation metrics on cases whose answers are known by hand."""

from __future__ import annotations

import numpy as np
import pytest

from models.common import evaluate as frame
from models.dce import evaluate as ev


def test_ssim_identical_is_one_and_noise_lowers_it() -> None:
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 1, (64, 64))
    assert frame.ssim(a, a) == pytest.approx(1.0)
    b = np.clip(a + rng.normal(0, 0.2, a.shape), 0, 1)
    assert frame.ssim(a, b) < 0.9
    # Structure-free images with different means: only the luminance term is left.
    x, y = np.full((32, 32), 0.2), np.full((32, 32), 0.6)
    c1 = (0.01) ** 2
    assert frame.ssim(x, y) == pytest.approx((2 * 0.2 * 0.6 + c1) / (0.04 + 0.36 + c1), rel=1e-6)


def test_psnr_of_a_constant_offset() -> None:
    a = np.zeros((10, 10))
    assert frame.psnr(a, a + 0.1) == pytest.approx(20.0)  # MSE 0.01, data range 1
    assert frame.psnr(a, a + 0.1, data_range=2.0) == pytest.approx(20.0 + 20 * np.log10(2))
    assert frame.psnr(a, a) == float("inf")


def test_mask_restricts_every_metric() -> None:
    truth = np.zeros((1, 20, 20))
    pred = truth.copy()
    pred[0, :, :10] = 0.5  # wrong only outside the mask
    mask = np.zeros_like(truth, bool)
    mask[0, :, 12:] = True
    assert frame.psnr(pred[0], truth[0], mask=mask[0]) == float("inf")
    errs = frame.series_errors(pred, truth, mask)
    assert errs["mae"] == 0 and errs["mse"] == 0
    assert frame.series_errors(pred, truth)["mae"] == pytest.approx(0.25)
    m = frame.ssim_map(pred[0], truth[0])
    assert frame.ssim(pred[0], truth[0], mask=mask[0]) == pytest.approx(m[mask[0]].mean())


def test_series_errors_known_values() -> None:
    x = np.linspace(0, 1, 100)
    e = frame.series_errors(2 * x + 1, x)
    assert e["r"] == pytest.approx(1.0)
    assert e["mae"] == pytest.approx(np.mean(x + 1))
    assert frame.series_errors(1 - x, x)["r"] == pytest.approx(-1.0)
    assert frame.series_errors(np.ones(5), x[:5])["r"] == 0.0  # constant: no correlation


def test_linear_baseline_recovers_a_known_map() -> None:
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, (2, 16, 16)).astype(np.float32)
    y = 0.3 * x + 0.1
    m = np.ones_like(x, bool)
    lin = ev.fit_linear([(x, y, m)])
    assert (lin.a, lin.b) == (pytest.approx(0.3, abs=1e-5), pytest.approx(0.1, abs=1e-5))
    np.testing.assert_allclose(lin(x), y, atol=1e-5)


def test_body_mask_is_the_filled_largest_blob() -> None:
    vol = np.zeros((2, 64, 64), np.float32)
    yy, xx = np.mgrid[:64, :64]
    disk = (yy - 32) ** 2 + (xx - 32) ** 2 < 20**2
    vol[:, disk] = 1000.0
    vol[:, 30:34, 30:34] = 0.0  # a dark hole inside the body (lung) stays body
    vol[:, 2:4, 2:4] = 1000.0  # a small bright speck in the air is not body
    m = frame.body_mask(vol)
    assert m[:, 32, 32].all() and not m[:, 2, 2].any()
    assert m[0][disk].all()  # the whole body, at most a blur radius more
    near = (yy - 32) ** 2 + (xx - 32) ** 2 < 23**2
    assert not m[0][~near].any()


def test_score_and_summary_on_a_perfect_and_a_wrong_method() -> None:
    rng = np.random.default_rng(2)
    truth = rng.uniform(0, 1, (3, 32, 32)).astype(np.float32)
    mask = np.ones_like(truth, bool)
    case = {"n_slices": 3, "scores": frame.score_case(truth, {"model": truth, "identity": 1 - truth},
                                                   mask)}
    table = frame.summarise([case, case])
    assert table["model"]["body"]["ssim"][0] == pytest.approx(1.0)
    assert table["model"]["unit"]["r"][0] == pytest.approx(1.0)
    assert table["identity"]["unit"]["r"][0] == pytest.approx(-1.0)
    text = ev.format_table(table, 2, 6)
    assert "| model | body |" in text and "0.71" in text


def test_cli_on_pairs_from_phantom_dicom(tmp_path) -> None:
    """phantom DICOM -> pairs -> evaluate (shipped ONNX model): table, JSON and PNG panel."""
    import json

    from models.dce.pairs import build_pairs
    from models.dce.phantom_dicom import write_phantom_study

    write_phantom_study(tmp_path / "dicom", 3005, n_slices=3, size=128)
    (res,) = build_pairs([tmp_path / "dicom"], tmp_path / "pairs")
    assert res.refused is None
    out = tmp_path / "eval"
    assert ev.main(["--pairs", str(tmp_path / "pairs"), "--fit-pairs", str(tmp_path / "pairs"),
                    "--out", str(out), "--threads", "1"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["table"]) == {"model", "identity", "linear"}
    assert metrics["n_series"] == 1 and metrics["n_slices"] == 3
    for row in metrics["table"].values():
        assert set(row) == {"unit", "body"}
        assert -1 <= row["body"]["r"][0] <= 1 and row["body"]["ssim"][0] <= 1
    assert (out / "table.md").read_text().count("|") > 20
    assert (out / "panels" / f"{res.study_uid}.png").is_file()


def test_cli_on_a_dicom_folder_pairs_first(tmp_path) -> None:
    import json

    from models.dce.phantom_dicom import write_phantom_study

    write_phantom_study(tmp_path / "dicom", 3006, n_slices=2, size=128)
    out = tmp_path / "eval"
    assert ev.main(["--dicom", str(tmp_path / "dicom"), "--fit-pairs", str(out / "pairs"),
                    "--out", str(out), "--threads", "1"]) == 0
    assert json.loads((out / "metrics.json").read_text())["n_slices"] == 2


def test_shortfalls_lists_each_metric_the_model_does_not_win() -> None:
    row = {"ssim": [0.9, 0], "psnr": [25.0, 0], "mae": [0.02, 0], "mse": [0.001, 0], "r": [0.95, 0]}
    table = {"model": {"body": row}, "identity": {"body": {**row, "ssim": [0.94, 0], "mae": [0.03, 0]}},
             "weak": {"body": {k: [v[0] * (0.5 if k in ("ssim", "psnr", "r") else 2), 0] for k, v in row.items()}}}
    assert frame.shortfalls(table, ("weak",)) == []
    misses = frame.shortfalls(table, ("identity",))
    assert misses[0].startswith("body ssim vs identity: 0.9 <= 0.94")
    assert len(misses) == 4  # ssim lost, psnr/mse/r tied (a tie is not a win), mae won
