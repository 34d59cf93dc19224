"""Export the conditional translator to ONNX (inputs `input` (N, 1, H, W) and `condition`
(N, C); batch, height and width dynamic) and write its model card, which
`dicom_synth.multicontrast` reads: `runtime: conditional_contrast` and a `conditioning`
block naming the contrasts in one-hot order, their series labels and the classifier
labels that map to them.

    python -m models.brain.export runs/brain_small/latest.pt --out models/weights
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dicom_synth.intensity import PER_SLICE_MINMAX, default_output_mapping
from dicom_synth.multicontrast import CONDITIONAL
from models.brain.gate_bias import add_pair_bias_argument, apply_pair_bias
from models.brain.networks import ConditionalTranslator
from models.brain.phantom import CONTRASTS
from models.brain.train import TrainConfig, load_translator
from models.common import export as common
from models.common.export import OPSET
from models.common.layers import ResidualBlock, with_post_filter
from models.guided_filter import GuidedFilter, add_post_filter_argument, post_filter_from

TASK = "brain_contrasts"
LABELS = {"t1": "T1", "t2": "T2", "t1c": "T1c", "flair": "FLAIR"}
INTENDED_USE = (
    "Research and demonstration only. From one brain MR series (T1, T2, T1c or FLAIR) it "
    "synthesizes the other contrasts in the same geometry (seed 002's conditional GAN), to "
    "complete a study. NOT FOR DIAGNOSIS: a synthetic T1c shows no real contrast uptake and "
    "a synthetic FLAIR may miss or invent lesions.")


SOURCE_INPUT = "source"  # the graph's source-contrast input, when the gate knows the source


def conditioning(gate_source: bool = False) -> dict[str, Any]:
    """The card's conditioning block; with `gate_source` the graph also takes the source
    contrast as a one-hot input named `source_input`."""
    return {"input": "condition", "encoding": "one-hot, float32 (N, C)", "contrasts": list(CONTRASTS),
            "labels": dict(LABELS), "source_labels": {f"brain_{c}": c for c in CONTRASTS},
            **({"source_input": SOURCE_INPUT} if gate_source else {})}


def _sources(model: torch.nn.Module) -> bool:
    """Whether the graph takes the source contrast (a translator, or one behind `FilteredNetwork`)."""
    return getattr(model, "network", model).decoder.gate_pair is not None


def _feeds(model: torch.nn.Module, x, cond) -> dict:
    """The graph's inputs: the image and the target one-hot, and with a pair gate some source
    other than the target."""
    feeds = {"input": x, "condition": cond}
    if _sources(model):
        feeds[SOURCE_INPUT] = torch.roll(cond, 1, 1) if isinstance(cond, torch.Tensor) else np.roll(cond, 1, axis=1)
    return feeds


def export_onnx(model: ConditionalTranslator, path: Path, n_contrasts: int, opset: int = OPSET) -> Path:
    """Trace in eval mode with a 64x64 dummy; batch, height and width stay dynamic."""
    cond = torch.zeros(1, n_contrasts)
    cond[0, 0] = 1.0
    feeds = _feeds(model, torch.zeros(1, 1, 64, 64), cond)
    axes = {"input": common.IMAGE_AXES, **{k: {0: "batch"} for k in list(feeds)[1:]}, "output": common.IMAGE_AXES}
    return common.export_onnx(model, path, feeds, axes, opset=opset)


def parity(model: ConditionalTranslator, onnx_path: Path, x: np.ndarray, cond: np.ndarray) -> float:
    """max |ONNX Runtime - PyTorch| on the same inputs."""
    return common.parity(model, onnx_path, _feeds(model, x, cond))


def feature_module(model: torch.nn.Module) -> torch.nn.Module:
    """The encoder's last residual block: the contrast-independent code `features` pool."""
    return [m for m in getattr(model, "network", model).encoder.modules() if isinstance(m, ResidualBlock)][-1]


def parity_inputs(n_contrasts: int, n: int = 4, h: int = 96, w: int = 80) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (n, 1, h, w)).astype(np.float32)
    cond = np.eye(n_contrasts, dtype=np.float32)[np.arange(n) % n_contrasts]
    return x, cond


def _not_in_seed(cfg: TrainConfig, post_filter: GuidedFilter | None = None,
                 gate_bias: Sequence[tuple[str, str, float]] = ()) -> str:
    """What this network and its training add to the seed, for the card's architecture text."""
    parts = []
    if cfg.lambda_paired > 0:
        parts.append("an L1 pull to the registered sibling contrast"
                     + (", weighted where the contrast changes" if cfg.lambda_change > 0 else ""))
    if cfg.net.input_gate:
        parts.append("a per-pixel input gate (output = g*input + (1-g)*decoded)"
                     + (" with a learnt bias per (source, target) pair, so the graph also takes the "
                        "source contrast" if cfg.net.gate_source else ""))
    if cfg.lambda_gate > 0:
        parts.append("the gate told to pass the input where the registered target repeats it"
                     + (f" (pairs agreeing on >= {cfg.gate_min_agreement:.0%} of the head)"
                        if cfg.gate_min_agreement > 0 else "")
                     + (" and to shut where it changes, both weighing alike" if cfg.gate_balanced else ""))
    if cfg.lambda_decoded > 0:
        parts.append("the decoder's own image (before the gate) pulled to the registered target as well")
    if gate_bias:
        parts.append("after training, " + ", ".join(f"the {LABELS[s]}->{LABELS[t]} gate logit raised by {b:g}"
                                                    for s, t, b in gate_bias)
                     + " (the smallest bias at which it beats both baselines on every metric on the validation "
                       "subjects; models.brain.gate_bias)")
    if post_filter is not None:
        side = 2 * post_filter.radius + 1
        parts.append(f"after the network, in the graph, a joint bilateral filter guided by the input series ({side}x"
                     f"{side}, sigma {post_filter.sigma_px:g} px, range sigma {post_filter.sigma_range:g} input units; "
                     "no weights)")
    return (" Not in the seed: " + "; ".join(parts) + ".") if parts else ""


def build_card(name: str, onnx_file: Path, cfg: TrainConfig, *, version: str,
               metrics: dict[str, Any] | None = None, training_data: dict[str, Any] | None = None,
               history: dict[str, Any] | None = None, post_filter: GuidedFilter | None = None,
               gate_bias: Sequence[tuple[str, str, float]] = ()) -> dict[str, Any]:
    card = common.model_card(
        name=name, task=TASK, version=version, onnx_file=onnx_file, config=cfg.to_dict(), describe={
            "output_label": "missing brain contrasts",
            "output_modality": "MR",
            "runtime": CONDITIONAL,
            "conditioning": conditioning(cfg.net.gate_source and cfg.net.input_gate),
            "architecture": (
                "Seed 002 conditional generator: one encoder to a contrast-independent code, one "
                "decoder conditioned on a one-hot target contrast (tiled and stacked with the code, and "
                "scaling/shifting every instance norm), U-Net skips, PatchGAN discriminator with "
                "adversarial and class heads; LSGAN, class guidance, reconstruction, cycle, cycle- and "
                "code-consistency, Algorithm-1 structure and Algorithm-2 background losses; "
                "InstanceNorm without running statistics." + _not_in_seed(cfg, post_filter, gate_bias)),
            "net": cfg.net.to_dict(),
            "input": {"name": "input", "layout": "NCHW", "channels": 1, "dtype": "float32",
                      "spatial_multiple": cfg.net.spatial_multiple,
                      "padding": "bottom/right with -1, cropped back",
                      "series": "axial brain MR, one of T1, T2, T1c, FLAIR (trained at 128x128, ~1.8 mm)"},
            "normalisation": {"kind": PER_SLICE_MINMAX, "range": [-1.0, 1.0]},
            "output_mapping": default_output_mapping()},
        history=history, training_data=training_data, metrics=metrics, intended_use=INTENDED_USE, limitations=(
            "Trained unpaired on a brain phantom (tissue-parameter signal equations), not on "
            "patients; intensities are relative per slice. A synthetic T1c can only show "
            "enhancement that the input contrast predicts."))
    common.add_post_filter(card, post_filter, "input series")
    if gate_bias:
        card["gate_bias"] = {f"{s}->{t}": b for s, t, b in gate_bias}
        card["limitations"] += "".join(
            f" The {LABELS[t]} made from a {LABELS[s]} redraws only where the gate stays shut after its "
            f"bias (+{b:g}): a faint or unexpected change comes out as the {LABELS[s]}." for s, t, b in gate_bias)
    return card


def main(argv: list[str] | None = None) -> int:
    p = common.export_arguments("Export a brain multi-contrast checkpoint to ONNX + card.", TASK,
                                "models.brain.evaluate")
    add_post_filter_argument(p, None)
    add_pair_bias_argument(p, ())
    a = p.parse_args(argv)
    post_filter = post_filter_from(a.post_filter)
    t, cfg, ckpt = load_translator(a.checkpoint)
    apply_pair_bias(t, a.gate_bias)
    t = with_post_filter(t, post_filter)
    onnx_path = export_onnx(t, a.out / f"{a.name}.onnx", cfg.net.n_contrasts)
    delta = parity(t, onnx_path, *parity_inputs(cfg.net.n_contrasts))
    metrics = common.read_metrics(a.metrics)
    card = build_card(a.name, onnx_path, cfg, version=a.version, metrics=metrics, history=ckpt.get("history"),
                      post_filter=post_filter, gate_bias=a.gate_bias)
    common.write_exported(card, delta, a.out, a.name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
