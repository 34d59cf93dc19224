"""Rebuild the demo pseudo-MRI model from nothing: phantom data, unpaired CycleGAN training
(config `small_curve`: 3000 steps, a warm restart to 6000, another to 9000 with the NGF
structure term on, then the fine-tuning stages `small_curve_tv_ngf`, `small_curve_skip_ngf`
and the same on 24, 48 and 96 training subjects; 2 CPU cores), ONNX export of the generator
followed by the CT-guided filter (`GuidedFilter`, v0.5.0 on) with a parity check,
evaluation on phantom test subjects against the baselines through the registry, and the
model card with the figures.

    nice python -m models.ct.build_demo --out models/weights
    python -m models.ct.build_demo --if-missing          # `make run`: only when no card exists
    python -m models.ct.build_demo --checkpoint runs/ct_demo/latest.pt   # skip training

Offline: needs torch (the `train` extra) but no network.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from dicom_synth.multicontrast import load_synthesis_model
from dicom_synth.registry import load_card
from models.chain import add_chain_arguments, chain_checkpoint, chain_command
from models.common import export as common
from models.common.evaluate import write_report
from models.common.export import write_card
from models.common.layers import with_post_filter
from models.ct import evaluate as ev
from models.ct import memory
from models.ct.export import build_card, export_onnx, feature_module, parity
from models.ct.phantom import SPLIT_BASE
from models.ct.recipe import DEMO_CONFIG, DEMO_POST_FILTER, DEMO_RESTART_TO, DEMO_THEN, DEMO_VERSION
from models.ct.train import CONFIGS, load_generator, train
from models.guided_filter import GuidedFilter, add_post_filter_argument, post_filter_flags, post_filter_from

NAME = "pseudo_mri"


def build(out_dir: Path, run_dir: Path, config: str = DEMO_CONFIG, n_test: int = 2, steps: int | None = None,
          threads: int | None = None, version: str = DEMO_VERSION, checkpoint: Path | None = None,
          restart_to: tuple[str | int, ...] = DEMO_RESTART_TO, then: tuple[str, ...] | None = None,
          post_filter: GuidedFilter | None = DEMO_POST_FILTER) -> dict:
    """Train (unless a checkpoint is given) the chain of `models.chain` (`restart_to`, `then`:
    by default the recipe's stages for its config, none for another), export, evaluate,
    write the card; `post_filter`: the CT-guided
    filter exported after the generator (`GuidedFilter`; None: none)."""
    t0 = time.time()
    if then is None:
        then = DEMO_THEN if config == DEMO_CONFIG else ()
    checkpoint = chain_checkpoint(train, CONFIGS, config, run_dir, steps, threads, restart_to, then, checkpoint)
    g, cfg, ckpt = load_generator(checkpoint)
    history = common.run_history(checkpoint, ckpt)
    g = with_post_filter(g, post_filter)
    onnx_path = export_onnx(g, Path(out_dir) / f"{NAME}.onnx")
    x = np.random.default_rng(0).uniform(-1, 1, (2, 1, 128, 128)).astype(np.float32)
    delta = parity(g, onnx_path, x)
    common.require_parity(delta)
    training_data = {
        "kind": "phantom, unpaired",
        "generator": "models.ct.phantom (tissue-label anatomy rendered as CT in HU and as T2 MRI)",
        "regions": list(cfg.regions), "ct_subjects_per_region": cfg.n_train,
        "mr_subjects_per_region": cfg.n_train,
        "seeds": f"train {SPLIT_BASE['train']}.. (CT even, MRI odd: no subject in both domains), "
                 f"val {SPLIT_BASE['val']}..",
        "slices_per_subject": cfg.slices_per_subject, "matrix": [cfg.size, cfg.size],
        "ct_slices": history.get("n_ct_slices"), "mr_slices": history.get("n_mr_slices"),
    }
    card = build_card(NAME, onnx_path, cfg, version=version, training_data=training_data, history=history,
                      post_filter=post_filter)
    write_card(card, out_dir, NAME)  # provisional: the evaluation runs the file through the registry
    model = load_synthesis_model(load_card(NAME, out_dir))
    t_eval = time.time()
    res = ev.evaluate(ev.phantom_cases(n_test), model, ev.fit_baselines(), panels_dir=run_dir / "panels")
    metrics = {
        "dataset": f"phantom test subjects {SPLIT_BASE['test']}..{SPLIT_BASE['test'] + n_test - 1} per region "
                   f"(abdomen, head_neck), 24 slices {cfg.size}x{cfg.size} each",
        "conventions": {"unit": "per-slice min-max to [0,1], data_range 1, whole image",
                        "body": "same images, metrics restricted to the CT body mask (> -500 HU, filled)"},
        "table": res["table"], "structure_dice": res["structure"],
        "structure_method": "each organ of the CT anatomy re-drawn on each image by a local halfway threshold "
                            "within 4 pixels of its boundary (models.ct.evaluate.halfway_segment; junctions of "
                            "three tissues, half-covered pixels and tissue pairs under 0.1 contrast on the true "
                            "MRI are left as the CT draws them); 3-D Dice per series; truth_mri is the ceiling",
        "baselines": res["baselines"], "n_series": res["n_series"], "n_slices": res["n_slices"],
        "onnx_seconds_per_slice_cpu": res["onnx_seconds_per_slice"],
    }
    card = build_card(NAME, onnx_path, cfg, version=version, metrics=metrics, training_data=training_data,
                      history=history, post_filter=post_filter)
    card["export_parity_max_abs"] = delta
    card["training_memory"] = {"cpu_peak_rss_mb_measured": history.get("peak_rss_mb"),
                               "gpu_estimate_small": memory.estimate(cfg),
                               "gpu_estimate_full": memory.estimate(CONFIGS["full"])}
    command = chain_command("models.ct.build_demo", config, CONFIGS, steps, restart_to, then)
    card["build"] = common.build_record(command + post_filter_flags(post_filter, DEMO_POST_FILTER), t0, t_eval, history)
    path = write_card(card, out_dir, NAME)
    text = ev.format_tables(res)
    write_report(run_dir, res, text)
    return common.finish_build(path, onnx_path, g, feature_module(g), config, text)


def main(argv: list[str] | None = None) -> None:
    p = common.build_arguments("Rebuild the demo CT -> pseudo-MRI model from the phantom.", CONFIGS, DEMO_CONFIG,
                               "runs/ct_demo", 2, DEMO_VERSION, per="per region")
    add_chain_arguments(p, CONFIGS, DEMO_RESTART_TO, DEMO_THEN)
    add_post_filter_argument(p, DEMO_POST_FILTER)
    a = p.parse_args(argv)
    if a.if_missing and common.model_present(NAME, a.out):
        return
    a.out.mkdir(parents=True, exist_ok=True)
    build(a.out, a.run_dir, a.config, a.test_subjects, a.steps, a.threads, version=a.version, checkpoint=a.checkpoint,
          restart_to=tuple(a.restart_to), then=None if a.then is None else tuple(a.then),
          post_filter=post_filter_from(a.post_filter))


if __name__ == "__main__":
    main()
