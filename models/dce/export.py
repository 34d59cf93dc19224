"""Export a trained generator to ONNX (dynamic batch and spatial axes) and write its model
card beside it, with the sha256 the registry checks on load.

    python -m models.dce.export runs/demo/best.pt --out models/weights --name dce_phase1
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from dicom_synth.intensity import PER_SLICE_MINMAX, default_output_mapping
from models.common import export as common
from models.common.export import OPSET
from models.dce.networks import UnetBlock, UnetGenerator
from models.dce.train import TrainConfig, load_generator

TASK = "dce_phase1"
INTENDED_USE = (
    "Research and demonstration only. Synthesizes an enhanced-looking first post-contrast "
    "fat-suppressed phase from a non-contrast breast T1 series. NOT FOR DIAGNOSIS: it cannot "
    "show enhancement that the non-contrast image does not predict, and it may invent or "
    "miss lesions.")


def export_onnx(generator: UnetGenerator, path: Path, opset: int = OPSET) -> Path:
    """Trace the generator in eval mode (the mode it was validated in) to ONNX."""
    m = generator.multiple
    return common.export_onnx(generator, path, {"input": torch.zeros(1, 1, m, m)}, opset=opset)


def parity(generator: UnetGenerator, onnx_path: Path, x: np.ndarray) -> float:
    """max |ONNX Runtime - PyTorch| on the same input (N, 1, H, W)."""
    return common.parity(generator, onnx_path, {"input": x})


def feature_module(generator: UnetGenerator) -> torch.nn.Module:
    """The U-Net's innermost (bottleneck) activation: what the domain guard's `features` pool."""
    innermost = [m for m in generator.modules() if isinstance(m, UnetBlock)][-1]
    return innermost.model[2]


def build_card(name: str, onnx_file: Path, cfg: TrainConfig, *, version: str,
               metrics: dict[str, Any] | None = None, training_data: dict[str, Any] | None = None,
               history: dict[str, Any] | None = None) -> dict[str, Any]:
    """The card contents; everything the worker needs to run the file correctly."""
    return common.model_card(
        name=name, task=TASK, version=version, onnx_file=onnx_file, config=cfg.to_dict(), describe={
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
            "output_mapping": default_output_mapping()},
        history=history, training_data=training_data, metrics=metrics, intended_use=INTENDED_USE,
        limitations=(
            "Output intensities are relative per slice (min-max scaling removes absolute "
            "signal). Trained on a physics phantom, not on patients: figures on the phantom "
            "say nothing about clinical accuracy."))


def main(argv: list[str] | None = None) -> int:
    p = common.export_arguments("Export a DCE Pix2Pix checkpoint to ONNX + card.", TASK, "models.dce.evaluate")
    a = p.parse_args(argv)
    g, cfg, ckpt = load_generator(a.checkpoint)
    onnx_path = export_onnx(g, a.out / f"{a.name}.onnx")
    x = np.random.default_rng(0).uniform(-1, 1, (2, 1, 256, 256)).astype(np.float32)
    delta = parity(g, onnx_path, x)
    metrics = common.read_metrics(a.metrics)
    card = build_card(a.name, onnx_path, cfg, version=a.version, metrics=metrics,
                      history=ckpt.get("history"))
    common.write_exported(card, delta, a.out, a.name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
