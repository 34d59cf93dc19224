"""Inference: the card's normalisation and output mapping are applied exactly, any H and W
are padded and cropped back, slices are batched, progress is reported."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from dicom_synth import intensity
from dicom_synth.inference import SynthesisModel, pad_to_multiple, pick_providers
from dicom_synth.registry import load_card, sha256_file


def _half_model(tmp: Path, multiple: int = 16) -> Path:
    """A real ONNX file computing output = 0.5·input; it also fails on sizes that are not
    multiples of `multiple` (a Reshape into blocks), like a U-Net would."""
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["b", 1, "h", "w"])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["b", 1, "h", "w"])
    half = helper.make_tensor("half", TensorProto.FLOAT, [], [0.5])
    shape_blocks = helper.make_tensor("blocks", TensorProto.INT64, [3], [0, -1, multiple])
    nodes = [
        helper.make_node("Reshape", ["input", "blocks"], ["blocked"]),  # fails unless W % m == 0
        helper.make_node("Shape", ["input"], ["shp"]),
        helper.make_node("Reshape", ["blocked", "shp"], ["back"]),
        helper.make_node("Mul", ["back", "half"], ["output"]),
    ]
    graph = helper.make_graph(nodes, "half", [x], [y], initializer=[half, shape_blocks])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = tmp / "half.onnx"
    onnx.save(model, path)
    card = {"name": "half", "task": "dce_phase1", "version": "0.0.1", "onnx_file": path.name,
            "sha256": sha256_file(path), "output_label": "DCE phase 1",
            "input": {"spatial_multiple": multiple},
            "normalisation": {"kind": "per_slice_minmax", "range": [-1.0, 1.0]},
            "output_mapping": intensity.default_output_mapping(4095.0), "intended_use": "tests"}
    (tmp / "half.card.json").write_text(json.dumps(card))
    return path


def test_normalisation_and_mapping_are_applied_exactly(tmp_path: Path) -> None:
    _half_model(tmp_path)
    model = SynthesisModel.from_card(load_card("dce_phase1", tmp_path), threads=1, batch_size=2)
    rng = np.random.default_rng(0)
    vol = rng.uniform(100, 3000, (5, 37, 50)).astype(np.float32)  # odd sizes: padding needed
    vol[2] = 7.0  # a constant slice maps to the bottom of the range
    seen: list[float] = []
    (out,) = model.run(vol, progress=seen.append)
    assert out.label == "DCE phase 1"
    assert out.pixels.shape == vol.shape and out.pixels.dtype == np.float32
    norm = intensity.normalise_slices(vol)
    expected = (0.5 * norm + 1.0) / 2.0 * 4095.0
    np.testing.assert_allclose(out.pixels, expected, rtol=1e-5, atol=1e-2)
    assert np.all(out.pixels[2] == pytest.approx(0.25 * 4095.0))
    assert seen == pytest.approx([0.4, 0.8, 1.0])
    assert model.providers[-1] == "CPUExecutionProvider"


def test_bad_volumes_are_refused(tmp_path: Path) -> None:
    _half_model(tmp_path)
    model = SynthesisModel.from_card(load_card("dce_phase1", tmp_path), threads=1)
    with pytest.raises(ValueError, match="NaN"):
        model.run(np.full((1, 16, 16), np.nan, np.float32))
    with pytest.raises(ValueError, match="volume"):
        model.run(np.zeros((1, 2, 16, 16), np.float32))


def test_pad_to_multiple_pads_bottom_right_only() -> None:
    b = np.arange(2 * 1 * 5 * 7, dtype=np.float32).reshape(2, 1, 5, 7)
    padded, crop = pad_to_multiple(b, 4, -1.0)
    assert padded.shape == (2, 1, 8, 8)
    np.testing.assert_array_equal(padded[(..., *crop)], b)
    assert np.all(padded[..., 5:, :] == -1.0) and np.all(padded[..., :, 7:] == -1.0)


def test_providers_prefer_cuda_when_offered() -> None:
    assert pick_providers(["CUDAExecutionProvider", "CPUExecutionProvider"]) == [
        "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert pick_providers(["CPUExecutionProvider"]) == ["CPUExecutionProvider"]


def test_output_mapping_round_trip_and_range() -> None:
    m = intensity.default_output_mapping(4095.0)
    o = np.array([-1.5, -1.0, 0.0, 1.0, 2.0], np.float32)
    s = intensity.to_stored(o, m)
    np.testing.assert_allclose(s, [0.0, 0.0, 2047.5, 4095.0, 4095.0])
    np.testing.assert_allclose(intensity.from_stored(s[1:4], m), o[1:4], atol=1e-6)
    with pytest.raises(ValueError, match="unsupported"):
        intensity.to_stored(o, {"kind": "log"})


def test_shipped_model_runs_on_odd_sizes() -> None:
    model = SynthesisModel.from_card(load_card("dce_phase1"), threads=1)
    vol = np.random.default_rng(1).uniform(0, 1000, (2, 130, 100)).astype(np.float32)
    (out,) = model.run(vol)
    assert out.pixels.shape == vol.shape
    assert out.pixels.min() >= 0 and out.pixels.max() <= model.card.output_mapping["stored_max"]
