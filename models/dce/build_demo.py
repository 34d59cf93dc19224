"""Rebuild the demo DCE weights from nothing by the recipe (`models/dce/recipe.py`): phantom
data, Pix2Pix training (config `small`, 1 torch thread, ~30 min), ONNX export with a parity
check, evaluation on phantom test subjects against both baselines, and the model card with those figures.

    nice python -m models.dce.build_demo --out models/weights   # other options: models.common.build_demo
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import numpy as np

from dicom_synth.inference import SynthesisModel
from models.common import build_demo
from models.common import export as common
from models.common.evaluate import conventions
from models.dce import evaluate as ev
from models.dce.export import TASK, build_card, export_onnx, feature_module, parity
from models.dce.recipe import RECIPE
from models.dce.train import CONFIGS, load_generator, train


def _training_data(cfg, history: dict) -> dict:
    return {
        "kind": "phantom",
        "generator": "models.dce.phantom (3 T spoiled-GRE physics, Parker AIF, Tofts lesions)",
        "train_subjects": cfg.n_train, "train_seeds": "1000..", "val_subjects": cfg.n_val,
        "val_seeds": "2000..", "slices_per_subject": cfg.slices_per_subject,
        "slice_spacing_mm": cfg.slice_spacing_mm, "matrix": [cfg.size, cfg.size],
        "pairs": history.get("n_pairs"),
    }


def _metrics(res: dict, cfg, n_test: int) -> dict:
    return {
        "dataset": f"phantom test subjects 3000..{3000 + n_test - 1}, 48 slices 384x384 each",
        "conventions": conventions("the body mask of the input"),
        "table": res["table"], "linear_baseline": res["linear"],
        "n_series": res["n_series"], "n_slices": res["n_slices"],
        "paper_seed000": {"ssim": [0.71, 0.01], "psnr": [23.70, 1.41], "mae": [0.032, 0.004],
                          "mse": [0.006, 0.002], "r": [0.872, 0.038],
                          "note": "real patients; phantom figures are not comparable"},
    }


def _report(res: dict) -> str:
    return ev.format_table(res["table"], res["n_series"], res["n_slices"])


def _parity(g, onnx_path: Path, cfg) -> float:
    return parity(g, onnx_path, np.random.default_rng(0).uniform(-1, 1, (2, 1, 384, 384)).astype(np.float32))


DEMO = build_demo.Demo(
    name=TASK, module="models.dce.build_demo", recipe=RECIPE, configs=CONFIGS, train=train, load=load_generator,
    export=lambda g, path, cfg: export_onnx(g, path), parity=_parity, card=partial(build_card, TASK),
    training_data=_training_data, metrics=_metrics, feature_module=feature_module, memory=None,
    evaluate=build_demo.phantom_evaluation(TASK, SynthesisModel.from_card, ev, ev.fit_linear_on_phantom, _report),
    cpu_seconds=True, hardware_note=", CPU shared with other jobs (wall time inflated)")


def build(out_dir: Path, run_dir: Path, config: str = RECIPE.config, n_test: int = 4,
          steps: int | None = None, version: str = RECIPE.version,
          checkpoint: Path | None = None, threads: int | None = None) -> dict:
    """The demo build of `models.common.build_demo` with the DCE family's pieces, built in the
    run folder: the shipped files are replaced only when everything passed, so a service
    reading models/weights never sees a half-written model."""
    stage = Path(run_dir) / "weights"
    card, staged_card, _ = build_demo.build(DEMO, stage, run_dir, config, n_test, steps, threads, version, checkpoint)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    onnx_path = stage / f"{TASK}.onnx"
    os.replace(onnx_path, Path(out_dir) / onnx_path.name)
    os.replace(staged_card, Path(out_dir) / staged_card.name)
    print(f"moved to {out_dir}")
    return card


def main(argv: list[str] | None = None) -> int:
    p = common.build_arguments("Rebuild the demo DCE phase-1 model from the phantom.", CONFIGS, RECIPE.config,
                               "runs/demo", 4)
    a = build_demo.parse(p, TASK, argv)
    if a is None:
        return 0
    build(a.out, a.run_dir, a.config, a.test_subjects, a.steps, checkpoint=a.checkpoint,
          threads=a.threads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
