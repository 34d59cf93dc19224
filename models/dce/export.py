"""Export a trained generator to ONNX (dynamic batch and spatial axes) and write its model
card beside it, with the sha256 the registry checks on load.

    python -m models.dce.export runs/demo/best.pt --out models/weights --name dce_phase1
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dicom_synth.intensity import PER_SLICE_MINMAX, default_output_mapping
from dicom_synth.registry import CARD_SUFFIX, sha256_file
from models.dce.networks import UnetGenerator
from models.dce.train import TrainConfig, load_generator

OPSET = 17  # onnxruntime >= 1.17 runs it; InstanceNormalization and ConvTranspose are native
INTENDED_USE = (
    "Research and demonstration only. Synthesizes an enhanced-looking first post-contrast "
    "fat-suppressed phase from a non-contrast breast T1 series. NOT FOR DIAGNOSIS: it cannot "
    "show enhancement that the non-contrast image does not predict, and it may invent or "
    "miss lesions.")


def export_onnx(generator: UnetGenerator, path: Path, opset: int = OPSET) -> Path:
    """Trace the generator in eval mode (the mode it was validated in) to ONNX."""
    generator.eval()
    m = generator.multiple
    dummy = torch.zeros(1, 1, m, m)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # InstanceNorm without running statistics always normalises by the input's own
        # statistics; the exporter's "train=True" warning describes exactly that.
        warnings.filterwarnings("ignore", message=".*instance_norm.*")
        torch.onnx.export(
            generator, (dummy,), str(path), input_names=["input"], output_names=["output"],
            dynamic_axes={"input": {0: "batch", 2: "height", 3: "width"},
                          "output": {0: "batch", 2: "height", 3: "width"}},
            opset_version=opset, dynamo=False,
        )
    return path


def parity(generator: UnetGenerator, onnx_path: Path, x: np.ndarray) -> float:
    """max |ONNX Runtime - PyTorch| on the same input (N, 1, H, W)."""
    import onnxruntime as ort

    generator.eval()
    with torch.no_grad():
        ref = generator(torch.from_numpy(x)).numpy()
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (out,) = sess.run(None, {"input": x})
    return float(np.abs(out - ref).max())


def build_card(name: str, onnx_file: Path, cfg: TrainConfig, *, version: str,
               metrics: dict[str, Any] | None = None, training_data: dict[str, Any] | None = None,
               history: dict[str, Any] | None = None) -> dict[str, Any]:
    """The card contents; everything the worker needs to run the file correctly."""
    return {
        "name": name,
        "task": "dce_phase1",
        "version": version,
        "onnx_file": onnx_file.name,
        "sha256": sha256_file(onnx_file),
        "output_label": "DCE phase 1",
        "architecture": "Pix2Pix (Isola et al. 2017): U-Net generator, 70x70 PatchGAN, "
                        "InstanceNorm without running statistics, no dropout",
        "net": cfg.net.to_dict(),
        "input": {"name": "input", "layout": "NCHW", "channels": 1, "dtype": "float32",
                  "spatial_multiple": cfg.net.spatial_multiple,
                  "padding": "bottom/right with the normalised minimum, cropped back",
                  "series": "axial non-contrast T1 (non-fat-suppressed 3D FLASH), one slice "
                            "per image, native matrix (trained at 384x384, 1 mm)"},
        "normalisation": {"kind": PER_SLICE_MINMAX, "range": [-1.0, 1.0]},
        "output_mapping": default_output_mapping(),
        "training": {k: v for k, v in cfg.to_dict().items() if k != "net"},
        "training_history": history or {},
        "training_data": training_data or {},
        "metrics": metrics or {},
        "intended_use": INTENDED_USE,
        "limitations": (
            "Output intensities are relative per slice (min-max scaling removes absolute "
            "signal). Trained on a physics phantom, not on patients: figures on the phantom "
            "say nothing about clinical accuracy."),
        "created": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "opset": OPSET,
    }


def write_card(card: dict[str, Any], out_dir: Path, name: str) -> Path:
    path = Path(out_dir) / f"{name}{CARD_SUFFIX}"
    path.write_text(json.dumps(card, indent=2) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Export a DCE Pix2Pix checkpoint to ONNX + card.")
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--out", type=Path, default=Path("models/weights"))
    p.add_argument("--name", default="dce_phase1")
    p.add_argument("--version", default="0.1.0")
    p.add_argument("--metrics", type=Path, default=None, help="JSON from models.dce.evaluate")
    a = p.parse_args(argv)
    g, cfg, ckpt = load_generator(a.checkpoint)
    onnx_path = export_onnx(g, a.out / f"{a.name}.onnx")
    x = np.random.default_rng(0).uniform(-1, 1, (2, 1, 256, 256)).astype(np.float32)
    delta = parity(g, onnx_path, x)
    metrics = json.loads(a.metrics.read_text()) if a.metrics else {}
    card = build_card(a.name, onnx_path, cfg, version=a.version, metrics=metrics,
                      history=ckpt.get("history"))
    card["export_parity_max_abs"] = delta
    print(write_card(card, a.out, a.name), f"parity max|Δ| = {delta:.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
