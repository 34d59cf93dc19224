"""The pixel classifier's held-out-source evaluation (issue 13): the real series of
../shared/realdata are labelled once and agree with the classification test's table, the
exported graph carries a `features` output, and the per-class scoring counts right."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from tests.conftest import MISSING_COLLECTIONS, REALDATA

pytest.importorskip("torch")


@pytest.mark.skipif(not REALDATA.exists(), reason="no ../shared/realdata")
def test_every_real_series_is_labelled_and_agrees_with_the_classification_test():
    from dicom_synth.classify.labels import LABELS
    from dicom_synth.series import group_series
    from models.classifier.realdata_labels import HELD_OUT_COLLECTION, REAL_SERIES, key_of, load_real_series
    from tests.test_classify_realdata import EXPECTED

    keys = set()
    for group in group_series([REALDATA]):
        key = key_of(REALDATA, group.files)
        assert key is not None, f"{group.files[0]} has no entry in REAL_SERIES"
        keys.add(key)
        description = str(getattr(pydicom.dcmread(group.files[0], stop_before_pixels=True), "SeriesDescription", ""))
        if description in EXPECTED:
            assert REAL_SERIES[key][0] == EXPECTED[description], key
    assert keys == {k for k in REAL_SERIES if k.split("/")[0] not in MISSING_COLLECTIONS}  # no stale entries
    assert all(label in LABELS for label, _ in REAL_SERIES.values())
    held = load_real_series(REALDATA)
    x, y, s = held.arrays(collections={HELD_OUT_COLLECTION})
    assert len(set(s.tolist())) == 7 and x.shape[1:] == (2, 128, 128)  # the 7 pydicom_data series
    assert {LABELS[k] for k in y} == {"ct_head_neck", "ct_abdomen_pelvis", "unknown"}
    assert any("no pixel data" in why for why in held.skipped)  # the fMRI header-only file


def test_export_has_logits_and_features(tmp_path):
    pytest.importorskip("onnx")
    import onnxruntime as ort

    from models.classifier.network import NetConfig, SeriesResNet
    from models.classifier.train import export, parity

    model = SeriesResNet(NetConfig(width=4)).eval()
    path = export(model, tmp_path / "m.onnx")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == ["logits", "features"]
    x = np.random.default_rng(0).random((3, 2, 128, 128), dtype=np.float32)
    logits, features = sess.run(["logits", "features"], {"input": x})
    assert features.shape == (3, 32) and logits.shape == (3, 18)
    w, b = model.fc.weight.detach().numpy(), model.fc.bias.detach().numpy()
    assert np.allclose(features @ w.T + b, logits, atol=1e-4)  # the features are what the fc layer reads
    assert parity(model, path, x) < 1e-4


def test_scoring_is_per_series_and_per_class():
    from models.classifier.heldout import REAL, report, score

    # 3 series of 2 slices: classes 0, 0, 1; the scorer predicts class 0 for everything
    x = np.zeros((6, 2, 4, 4), np.float16)
    y = np.array([0, 0, 0, 0, 1, 1])
    s = np.array([7, 7, 8, 8, 9, 9])

    def always_zero(_x, series):
        ids = np.unique(series)
        logp = np.log(np.tile([[0.9, 0.1] + [1e-9] * 16], (len(ids), 1)))
        return logp, ids

    out = score(always_zero, {REAL: (x, y, s)})[REAL]
    assert out["series"] == 3 and out["overall"] == pytest.approx(2 / 3, abs=1e-4)
    assert out["per_class"]["breast_t1_nc"] == {"acc": 1.0, "n": 2}
    assert out["per_class"]["breast_t2"] == {"acc": 0.0, "n": 1}
    assert out["predictions"][2] == "breast_t2 -> breast_t1_nc (0.90)"
    table = report([{"recipe": "r", "train_seconds": 0, "results": {REAL: out}}])
    assert "| realdata/pydicom_data | breast_t2 | 1 | 0.00 |" in table
