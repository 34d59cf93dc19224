"""Export the CT -> pseudo-MRI generator to ONNX (dynamic batch and spatial axes) and write
its model card, which `dicom_synth.multicontrast` reads: the HU window in `normalisation`,
`runtime: pseudo_mri`, MR as the output modality.

    python -m models.ct.export runs/ct_small/latest.pt --out models/weights --name pseudo_mri
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from dicom_synth.intensity import default_output_mapping
from dicom_synth.multicontrast import PSEUDO_MRI
from models.common import export as common
from models.common.export import OPSET
from models.common.layers import ResidualBlock, with_post_filter
from models.ct.train import TrainConfig, load_generator
from models.guided_filter import GuidedFilter, add_post_filter_argument, post_filter_from

TASK = "pseudo_mri"
OUTPUT_LABEL = "pseudo-MRI (T2-like)"
INTENDED_USE = (
    "Research and demonstration only. Synthesizes a T2-weighted-looking pseudo-MRI in the "
    "frame of reference of a planning CT (head-and-neck or abdomen/pelvis), as seed 004 does "
    "to help contour soft-tissue organs at risk without registering a real MRI. NOT FOR "
    "DIAGNOSIS: it cannot show what the CT does not encode, and may invent or miss structure.")


def export_onnx(generator: torch.nn.Module, path: Path, opset: int = OPSET) -> Path:
    """Trace in eval mode (the mode validated) with a 64x64 dummy (reflection padding needs
    a few pixels at the bottleneck); batch, height and width stay dynamic."""
    return common.export_onnx(generator, path, {"input": torch.zeros(1, 1, 64, 64)}, opset=opset)


def parity(generator: torch.nn.Module, onnx_path: Path, x: np.ndarray) -> float:
    """max |ONNX Runtime - PyTorch| on the same (N, 1, H, W) input."""
    return common.parity(generator, onnx_path, {"input": x})


def feature_module(generator: torch.nn.Module) -> torch.nn.Module:
    """The generator's last residual block (after the bottleneck): what `features` pool."""
    return [m for m in generator.modules() if isinstance(m, ResidualBlock)][-1]


AIR_HU = -500.0  # below: air or lung, a signal void on every MR sequence


def architecture(cfg: TrainConfig, post_filter: GuidedFilter | None = None) -> str:
    """The card's one-paragraph description, true to the run's options."""
    losses = "L1 cycle and identity losses" if cfg.lambda_identity > 0 else (
        "L1 cycle loss (the seed's identity term switched off: it holds the CT->MRI generator near "
        "the identity, and fat must turn from dark to bright)")
    extras = []
    if cfg.net.long_skip:
        extras.append("a full-resolution skip into the generator's last layer (not in the seed)")
    if cfg.lambda_ngf > 0:
        extras.append(f"a normalised-gradient-field structure term x{cfg.lambda_ngf:g}: CT edges kept in either "
                      "sign (not in the seed)")
    if cfg.lambda_tv > 0:
        extras.append(f"a total-variation term x{cfg.lambda_tv:g} on the pseudo-MRI (not in the seed)")
    if cfg.hu_curve is not None:
        extras.append("a soft-tissue HU curve as input normalisation")
    if post_filter is not None:
        side = 2 * post_filter.radius + 1
        extras.append(f"after the generator, in the graph, a joint bilateral filter guided by the CT ({side}x{side}, "
                      f"sigma {post_filter.sigma_px:g} px, range sigma "
                      f"{post_filter.sigma_range:g} input units; no weights, not in the seed)")
    return ("CycleGAN as in seed 004: ResNet generator with 2 residual blocks, upsample-then-convolve "
            "with one transposed convolution, 70x70 PatchGAN per domain plus a denoising discriminator on "
            f"the MRI side, LSGAN, {losses}; InstanceNorm without running statistics"
            + ("; with " + ", ".join(extras) if extras else "")
            + ". Only the CT->MRI generator is exported.")


def build_card(name: str, onnx_file: Path, cfg: TrainConfig, *, version: str,
               metrics: dict[str, Any] | None = None, training_data: dict[str, Any] | None = None,
               history: dict[str, Any] | None = None, post_filter: GuidedFilter | None = None) -> dict[str, Any]:
    """Everything the runtime needs to run the file as it was validated."""
    card = common.model_card(
        name=name, task=TASK, version=version, onnx_file=onnx_file, config=cfg.to_dict(), describe={
            "output_label": OUTPUT_LABEL,
            "output_modality": "MR",
            "runtime": PSEUDO_MRI,
            "architecture": architecture(cfg, post_filter),
            "net": cfg.net.to_dict(),
            "input": {"name": "input", "layout": "NCHW", "channels": 1, "dtype": "float32",
                      "spatial_multiple": cfg.net.spatial_multiple,
                      "padding": "bottom/right with -1 (air after the window), cropped back",
                      "series": "axial non-contrast CT in Hounsfield units (rescale applied), "
                                "head-and-neck or abdomen/pelvis"},
            "normalisation": cfg.normalisation(),
            # applied by the runtime after the network (dicom_synth.multicontrast.signal_void)
            "signal_void": {"below_hu": AIR_HU, "value": -1.0, "why": "air (airway, lung, bowel gas) has no MR signal"},
            "output_mapping": default_output_mapping()},
        history={k: v for k, v in (history or {}).items() if k != "subjects"}, training_data=training_data,
        metrics=metrics, intended_use=INTENDED_USE, limitations=(
            "Trained unpaired on a CT/MRI phantom, not on patients; output intensities are "
            "relative ((o+1)/2*stored_max), T2-like, not a calibrated MR signal. Figures on the "
            "phantom say nothing about clinical accuracy."))
    common.add_post_filter(card, post_filter, "CT")
    return card


def main(argv: list[str] | None = None) -> int:
    p = common.export_arguments("Export a CT->pseudo-MRI checkpoint to ONNX + card.", TASK, "models.ct.evaluate")
    add_post_filter_argument(p, None)
    a = p.parse_args(argv)
    post_filter = post_filter_from(a.post_filter)
    g, cfg, ckpt = load_generator(a.checkpoint)
    g = with_post_filter(g, post_filter)
    onnx_path = export_onnx(g, a.out / f"{a.name}.onnx")
    x = np.random.default_rng(0).uniform(-1, 1, (2, 1, 128, 96)).astype(np.float32)
    delta = parity(g, onnx_path, x)
    metrics = common.read_metrics(a.metrics)
    card = build_card(a.name, onnx_path, cfg, version=a.version, metrics=metrics, history=ckpt.get("history"),
                      post_filter=post_filter)
    common.write_exported(card, delta, a.out, a.name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
