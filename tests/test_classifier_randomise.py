"""The pixel classifier's training recipe (issue 13): domain randomisation keeps what the
runtime's input means (percentile scale, MR channel 1 empty, CT channel 1 in Hounsfield
units), the real series of ../shared/realdata are labelled once and agree with the
classification test's table, and the exported graph carries a `features` output."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from tests.conftest import REALDATA

torch = pytest.importorskip("torch")

from models.classifier.train import _monotone_curve, randomise  # noqa: E402


def _batch() -> torch.Tensor:
    x = torch.zeros(8, 2, 128, 128)
    yy, xx = torch.meshgrid(torch.arange(128), torch.arange(128), indexing="ij")
    disc = (((yy - 64) ** 2 + (xx - 64) ** 2) < 50**2).float()
    x[:4, 0] = disc * torch.linspace(0.2, 1.0, 4)[:, None, None]  # MR: channel 1 zero
    hu = 50.0  # soft tissue everywhere: channel 1 = (HU + 1000) / 3000
    x[4:, 1] = (hu + 1000) / 3000
    x[4:, 0] = 0.5
    return x


def test_randomise_keeps_the_runtime_scale_and_the_hounsfield_units():
    x = _batch()
    out = randomise(x, torch.Generator().manual_seed(3))
    assert out.shape == x.shape
    assert float(out[:, 0].min()) >= 0.0 and float(out[:, 0].max()) <= 1.5
    assert torch.count_nonzero(out[:4, 1]) == 0  # MR stays MR
    centre = out[4:, 1, 54:74, 54:74] * 3000 - 1000  # zoom <= 1.33 and shift <= 12 % keep it inside
    assert float((centre - 50.0).abs().mean()) < 15.0 and float((centre - 50.0).abs().max()) < 100.0
    assert not torch.allclose(out[:4, 0], x[:4, 0], atol=0.05)  # it does change the MR images
    again = randomise(x, torch.Generator().manual_seed(3))
    assert torch.equal(out, again)  # deterministic in the generator


def test_intensity_curves_are_monotone():
    ramp = torch.linspace(0, 1, 200).repeat(16, 1)[:, None, :].expand(16, 4, 200).contiguous()
    curved = _monotone_curve(ramp, torch.Generator().manual_seed(0))
    assert float(torch.diff(curved, dim=-1).min()) >= -1e-6
    assert float(curved.min()) >= 0.0 and float(curved.max()) <= 1.0 + 1e-6


@pytest.mark.skipif(not REALDATA.exists(), reason="no ../shared/realdata")
def test_every_real_series_is_labelled_and_agrees_with_the_classification_test():
    from dicom_synth.classify.labels import LABELS
    from dicom_synth.series import group_series
    from models.classifier.realdata_labels import HELD_OUT_COLLECTION, REAL_SERIES, key_of
    from tests.test_classify_realdata import EXPECTED

    keys = set()
    for group in group_series([REALDATA]):
        key = key_of(REALDATA, group.files)
        assert key is not None, f"{group.files[0]} has no entry in REAL_SERIES"
        keys.add(key)
        description = str(getattr(pydicom.dcmread(group.files[0], stop_before_pixels=True), "SeriesDescription", ""))
        if description in EXPECTED:
            assert REAL_SERIES[key][0] == EXPECTED[description], key
    assert keys == set(REAL_SERIES)  # no stale entries
    assert all(label in LABELS for label, _ in REAL_SERIES.values())
    assert any(k.startswith(HELD_OUT_COLLECTION + "/") for k in REAL_SERIES)


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
