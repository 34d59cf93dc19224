"""Export every family's network the same way: ONNX (opset 17, dynamic batch and spatial
axes, traced in eval mode), a parity check of ONNX Runtime against PyTorch, the model card
(with the sha256 the registry checks) and its training domain (`models.domain_reference`:
a `features` output and the `domain` block the runtime's domain guard reads)."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dicom_synth.registry import CARD_SUFFIX, UnknownModelError, load_card, sha256_file

OPSET = 17  # onnxruntime >= 1.17 runs it; InstanceNormalization and ConvTranspose are native
IMAGE_AXES = {0: "batch", 2: "height", 3: "width"}
PARITY_LIMIT = 1e-4  # max |ONNX Runtime - PyTorch| an export may show
TINY_DOMAIN_COUNTS = (2, 3, 1)  # subjects per split for a test model's domain block (fit, val, test)


def export_onnx(model: nn.Module, path: Path, inputs: Mapping[str, torch.Tensor],
                axes: Mapping[str, Mapping[int, str]] | None = None, opset: int = OPSET) -> Path:
    """Trace `model` in eval mode (the mode it was validated in) on the named example
    inputs; one output, `output`. `axes`: the dynamic axes (default: batch, height and
    width of the first input and of the output)."""
    model.eval()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    first = next(iter(inputs))
    axes = dict(axes or {first: IMAGE_AXES, "output": IMAGE_AXES})
    with warnings.catch_warnings():
        # InstanceNorm without running statistics always normalises by the input's own
        # statistics; the exporter's "train=True" warning describes exactly that.
        warnings.filterwarnings("ignore", message=".*instance_norm.*")
        torch.onnx.export(model, tuple(inputs.values()), str(path), input_names=list(inputs),
                          output_names=["output"], dynamic_axes=axes, opset_version=opset, dynamo=False)
    return path


def parity(model: nn.Module, onnx_path: Path, feeds: Mapping[str, np.ndarray]) -> float:
    """max |ONNX Runtime - PyTorch| of `output` on the same inputs."""
    import onnxruntime as ort

    model.eval()
    with torch.no_grad():
        ref = model(*(torch.from_numpy(v) for v in feeds.values())).numpy()
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (out,) = sess.run(["output"], dict(feeds))
    return float(np.abs(out - ref).max())


def require_parity(delta: float) -> None:
    if delta >= PARITY_LIMIT:
        raise RuntimeError(f"ONNX parity failed: max |Δ| = {delta}")


def model_card(*, name: str, task: str, version: str, onnx_file: Path, config: Mapping[str, Any],
               describe: Mapping[str, Any], intended_use: str, limitations: str,
               history: Mapping[str, Any] | None = None, training_data: Mapping[str, Any] | None = None,
               metrics: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The card every family writes: identity and sha256, the family's own description
    (`describe`: output label, runtime, architecture, input, normalisation, ...), the run's
    options (`config` without the network, which `describe` holds), history, data, metrics."""
    return {
        "name": name,
        "task": task,
        "version": version,
        "onnx_file": Path(onnx_file).name,
        "sha256": sha256_file(onnx_file),
        **describe,
        "training": {k: v for k, v in config.items() if k != "net"},
        "training_history": dict(history or {}),
        "training_data": dict(training_data or {}),
        "metrics": dict(metrics or {}),
        "intended_use": intended_use,
        "limitations": limitations,
        "created": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "opset": OPSET,
    }


def add_post_filter(card: dict[str, Any], post_filter: Any, guide: str) -> None:
    """Record the input-guided filter exported after the network, and what it costs."""
    if post_filter is not None:
        card["post_filter"] = post_filter.to_dict()
        card["limitations"] += post_filter.limitation(guide)


def write_card(card: Mapping[str, Any], out_dir: Path, name: str) -> Path:
    path = Path(out_dir) / f"{name}{CARD_SUFFIX}"
    path.write_text(json.dumps(card, indent=2) + "\n")
    return path


def export_arguments(description: str, task: str, evaluate_module: str) -> argparse.ArgumentParser:
    """`python -m models.<family>.export CHECKPOINT --out --name --version --metrics`."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--out", type=Path, default=Path("models/weights"))
    p.add_argument("--name", default=task)
    p.add_argument("--version", default="0.1.0")
    p.add_argument("--metrics", type=Path, default=None, help=f"JSON from {evaluate_module}")
    return p


def read_metrics(path: Path | None) -> dict[str, Any]:
    return json.loads(Path(path).read_text()) if path else {}


def write_exported(card: dict[str, Any], delta: float, out_dir: Path, name: str) -> Path:
    """The card with its parity figure, written; says where and the parity."""
    card["export_parity_max_abs"] = delta
    path = write_card(card, out_dir, name)
    print(path, f"parity max|Δ| = {delta:.2e}")
    return path


def build_arguments(description: str, configs: Mapping[str, Any], config: str, run_dir: str, test_subjects: int,
                    version: str | None = None, per: str | None = None) -> argparse.ArgumentParser:
    """`python -m models.<family>.build_demo`: --out --run-dir --config --steps --threads
    [--version] --test-subjects --checkpoint --if-missing."""
    from dicom_synth.registry import default_models_dir

    p = argparse.ArgumentParser(description=description)
    p.add_argument("--out", type=Path, default=default_models_dir())
    p.add_argument("--run-dir", type=Path, default=Path(run_dir))
    p.add_argument("--config", choices=sorted(configs), default=config)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: config)")
    if version:
        p.add_argument("--version", default=version, help="the card's version")
    p.add_argument("--test-subjects", type=int, default=test_subjects, help=per)
    p.add_argument("--checkpoint", type=Path, default=None, help="skip training, use this")
    p.add_argument("--if-missing", action="store_true", help="do nothing when a valid card exists")
    return p


def finish_build(card_path: Path, onnx_path: Path, model: nn.Module, feature_module: nn.Module, config: str,
                 report: str) -> dict[str, Any]:
    """The built model's training domain (`add_domain`, few subjects for `tiny`), the
    evaluation table printed; the card as written."""
    card = add_domain(card_path, feature_tensor(onnx_path, model, feature_module), domain_counts(config))
    print(report)
    print(f"card: {card_path}  total {card['build']['total_seconds']} s")
    return card


def run_history(checkpoint: Path, ckpt: Mapping[str, Any]) -> dict[str, Any]:
    """The run's history.json beside the checkpoint, else the one inside it."""
    hist_file = Path(checkpoint).parent / "history.json"
    return json.loads(hist_file.read_text()) if hist_file.exists() else dict(ckpt.get("history", {}))


def build_record(command: str, t0: float, t_eval: float, history: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    """The card's `build` block: how to rebuild it, how long it took, on what."""
    from models.common.trainer import peak_rss_mb

    return {"command": command, "total_seconds": round(time.time() - t0, 1),
            "train_seconds": history.get("train_seconds"), "train_cpu_seconds": history.get("train_cpu_seconds"),
            "eval_seconds_incl_phantom_generation": round(time.time() - t_eval, 1),
            "hardware": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads",
            "torch": torch.__version__, "peak_rss_mb_build": round(peak_rss_mb(), 1), **extra}


def model_present(task: str, models_dir: Path) -> bool:
    """Whether a valid card (and file) for the task is in models_dir (`--if-missing`)."""
    try:
        load_card(task, models_dir)
    except (UnknownModelError, ValueError):
        return False
    print(f"{task} model present; nothing to do")
    return True


# ------------------------------------------------------------------ the training domain
def onnx_scopes(model: nn.Module, module: nn.Module) -> list[str]:
    """The scopes torch.onnx may give the nodes of `module` inside `model`: the attribute
    path, an index joined to its container's name ("/network/body/body.7"); then the same
    without one level, for a module whose method (not `forward`) its parent calls."""
    path = next(n for n, m in model.named_modules() if m is module)
    parts: list[str] = []
    for seg in path.split("."):
        parts.append(f"{parts[-1].rsplit('.', 1)[0] if parts else ''}.{seg}" if seg.isdigit() else seg)
    return ["/" + "/".join(parts)] + ["/" + "/".join(parts[:i] + parts[i + 1:]) for i in range(len(parts) - 1)]


def feature_tensor(onnx_path: Path, model: nn.Module, module: nn.Module) -> str:
    """The tensor the last node of `module` writes in the exported graph: what
    `models.domain_reference` pools into the `features` output."""
    import onnx

    nodes = onnx.load(str(onnx_path), load_external_data=False).graph.node
    for scope in onnx_scopes(model, module):
        inside = [n for n in nodes if n.name.startswith(scope + "/")]
        if inside:
            return inside[-1].output[0]
    raise ValueError(f"no node of {onnx_scopes(model, module)[0]} in {Path(onnx_path).name}")


def add_domain(card_path: Path, tensor: str | None, counts: tuple[int, int, int] | None = None,
               data: Path | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Give the card's model its `features` output (pooled from `tensor`) and the card its
    `domain` block, from the family's phantom splits (`counts` subjects per split) or from
    the series under `data`. The card as written (new sha256 and the domain)."""
    from dicom_synth.registry import ModelCard
    from models import domain_reference

    card_path = Path(card_path)
    card = ModelCard.from_dict(json.loads(card_path.read_text()), card_path=card_path)
    card = domain_reference.ensure_features(card, tensor, log=log)
    domain = domain_reference.build_domain(card, counts, log=log, data=data)
    domain_reference.write_card(card, domain, card.sha256)
    return json.loads(card_path.read_text())


def domain_counts(config_name: str) -> tuple[int, int, int] | None:
    """Phantom subjects per split for the domain block: few for the `tiny` test config,
    the family's defaults otherwise."""
    return TINY_DOMAIN_COUNTS if config_name == "tiny" else None
