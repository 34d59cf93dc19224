"""Rebuild the demo DCE weights from nothing: phantom data, Pix2Pix training (config `demo`,
2 CPU cores, ~30 min), ONNX export with a parity check, evaluation on phantom test
subjects against both baselines, and the model card with those figures.

    nice python -m models.dce.build_demo --out models/weights
    python -m models.dce.build_demo --if-missing      # `make run`: only when no card exists

Offline: needs torch (the `train` extra) but no network.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import numpy as np

from dicom_synth.inference import SynthesisModel
from dicom_synth.registry import load_card
from models.common import export as common
from models.common.export import write_card
from models.dce import evaluate as ev
from models.dce.export import build_card, export_onnx, feature_module, parity
from models.dce.train import CONFIGS, load_generator, train

NAME = "dce_phase1"


def build(out_dir: Path, run_dir: Path, config: str = "demo", n_test: int = 4,
          steps: int | None = None, version: str = "0.2.0",
          checkpoint: Path | None = None, threads: int | None = None) -> dict:
    """Train (unless a checkpoint is given), export, evaluate, write the card."""
    t0, cpu0 = time.time(), time.process_time()
    if checkpoint is None:
        cfg = CONFIGS[config]
        if steps is not None:
            cfg = dataclasses.replace(cfg, steps=steps)
        if threads is not None:
            cfg = dataclasses.replace(cfg, threads=threads)
        train(cfg, run_dir)
        checkpoint = run_dir / "latest.pt"
    g, cfg, ckpt = load_generator(checkpoint)
    history = common.run_history(checkpoint, ckpt)
    # Build in the run folder; replace the shipped files only when everything passed, so a
    # service reading models/weights never sees a half-written model.
    stage = Path(run_dir) / "weights"
    onnx_path = export_onnx(g, stage / f"{NAME}.onnx")
    x = np.random.default_rng(0).uniform(-1, 1, (2, 1, 384, 384)).astype(np.float32)
    delta = parity(g, onnx_path, x)
    common.require_parity(delta)
    training_data = {
        "kind": "phantom",
        "generator": "models.dce.phantom (3 T spoiled-GRE physics, Parker AIF, Tofts lesions)",
        "train_subjects": cfg.n_train, "train_seeds": "1000..", "val_subjects": cfg.n_val,
        "val_seeds": "2000..", "slices_per_subject": cfg.slices_per_subject,
        "slice_spacing_mm": cfg.slice_spacing_mm, "matrix": [cfg.size, cfg.size],
        "pairs": history.get("n_pairs"),
    }
    # Write a provisional card so the evaluation runs the exported file through the registry.
    card = build_card(NAME, onnx_path, cfg, version=version, training_data=training_data,
                      history=history)
    write_card(card, stage, NAME)
    model = SynthesisModel.from_card(load_card("dce_phase1", stage))
    t_eval = time.time()
    res = ev.evaluate(ev.phantom_cases(n_test), model, ev.fit_linear_on_phantom(),
                      panels_dir=run_dir / "panels")
    n_slices = res["n_slices"]
    metrics = {
        "dataset": f"phantom test subjects 3000..{3000 + n_test - 1}, 48 slices 384x384 each",
        "conventions": {"unit": "per-slice min-max to [0,1], data_range 1, whole image",
                        "body": "same images, metrics restricted to the body mask of the input"},
        "table": res["table"], "linear_baseline": res["linear"],
        "n_series": res["n_series"], "n_slices": n_slices,
        "paper_seed000": {"ssim": [0.71, 0.01], "psnr": [23.70, 1.41], "mae": [0.032, 0.004],
                          "mse": [0.006, 0.002], "r": [0.872, 0.038],
                          "note": "real patients; phantom figures are not comparable"},
    }
    card = build_card(NAME, onnx_path, cfg, version=version, metrics=metrics,
                      training_data=training_data, history=history)
    card["export_parity_max_abs"] = delta
    cmd = f"python -m models.dce.build_demo --config {config}"
    cmd += f" --steps {steps}" if steps is not None else ""
    cmd += f" --threads {threads}" if threads is not None else ""
    card["build"] = common.build_record(cmd, t0, t_eval, history,
                                        total_cpu_seconds=round(time.process_time() - cpu0, 1))
    card["build"]["hardware"] += ", CPU shared with other jobs (wall time inflated)"
    staged_card = write_card(card, stage, NAME)
    card = common.finish_build(staged_card, onnx_path, g, feature_module(g), config,
                               ev.format_table(res["table"], res["n_series"], n_slices))
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    os.replace(onnx_path, Path(out_dir) / onnx_path.name)
    os.replace(staged_card, Path(out_dir) / staged_card.name)
    print(f"moved to {out_dir}")
    return card


def main(argv: list[str] | None = None) -> int:
    p = common.build_arguments("Rebuild the demo DCE phase-1 model from the phantom.", CONFIGS, "demo", "runs/demo", 4)
    a = p.parse_args(argv)
    if a.if_missing and common.model_present(NAME, a.out):
        return 0
    a.out.mkdir(parents=True, exist_ok=True)
    build(a.out, a.run_dir, a.config, a.test_subjects, a.steps, checkpoint=a.checkpoint,
          threads=a.threads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
