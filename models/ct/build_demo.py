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

import argparse
import dataclasses
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from dicom_synth.multicontrast import load_synthesis_model
from dicom_synth.registry import UnknownModelError, default_models_dir, load_card
from models.chain import add_chain_arguments, chain_command, train_chain
from models.ct import evaluate as ev
from models.ct import memory
from models.ct.export import build_card, export_onnx, parity
from models.ct.networks import with_post_filter
from models.ct.phantom import SPLIT_BASE
from models.ct.train import CONFIGS, load_generator, peak_rss_mb, train
from models.dce.export import write_card
from models.guided_filter import GuidedFilter, add_post_filter_argument, post_filter_flags, post_filter_from

NAME = "pseudo_mri"
DEMO_CONFIG = "small_curve"  # seed 004's CycleGAN at CPU width, no identity term, soft-tissue HU curve
DEMO_VERSION = "0.5.0"
# 3000 steps, a warm restart to 6000, another to 9000 with the NGF structure term switched on
DEMO_RESTART_TO: tuple[str | int, ...] = (6000, "9000:lambda_ngf=20")
# then total variation, then a long skip, then the same on 24, 48 and 96 training subjects
# per region and modality (how v0.4.0 was made; v0.5.0 is the same generator)
DEMO_THEN: tuple[str, ...] = ("small_curve_tv_ngf", "small_curve_skip_ngf", "small_curve_skip_ngf_24",
                              "small_curve_skip_ngf_48", "small_curve_skip_ngf_96")
# exported after the generator (v0.5.0 on): chosen on the validation subjects (42000..42002 per
# region; organ Dice 0.950 -> 0.969, body SSIM 0.641 -> 0.697 with v0.4.0's generator)
DEMO_POST_FILTER = GuidedFilter(radius=3, sigma_px=2.0, sigma_range=0.1)


def build(out_dir: Path, run_dir: Path, config: str = DEMO_CONFIG, n_test: int = 2, steps: int | None = None,
          threads: int | None = None, version: str = DEMO_VERSION, checkpoint: Path | None = None,
          restart_to: tuple[str | int, ...] = DEMO_RESTART_TO, then: tuple[str, ...] | None = None,
          post_filter: GuidedFilter | None = DEMO_POST_FILTER) -> dict:
    """Train (unless a checkpoint is given), export, evaluate, write the card. `restart_to`:
    after the run, resume it with a schedule of each of these many steps in turn (warm
    restarts: the learning rate jumps back up, then decays to 0 again), as the committed
    demo weights were made; `then`: fine-tuning configs after that (`models.chain`; by default
    the demo's stages for the demo config, none for another); `post_filter`: the CT-guided
    filter exported after the generator (`GuidedFilter`; None: none)."""
    t0 = time.time()
    if then is None:
        then = DEMO_THEN if config == DEMO_CONFIG else ()
    if checkpoint is None:
        overrides = {k: v for k, v in (("steps", steps), ("threads", threads)) if v is not None}
        checkpoint = train_chain(train, dataclasses.replace(CONFIGS[config], **overrides), run_dir, restart_to,
                                 [CONFIGS[c] for c in then])
    g, cfg, ckpt = load_generator(checkpoint)
    hist_file = Path(checkpoint).parent / "history.json"
    history = json.loads(hist_file.read_text()) if hist_file.exists() else ckpt.get("history", {})
    g = with_post_filter(g, post_filter)
    onnx_path = export_onnx(g, Path(out_dir) / f"{NAME}.onnx")
    x = np.random.default_rng(0).uniform(-1, 1, (2, 1, 128, 128)).astype(np.float32)
    delta = parity(g, onnx_path, x)
    if delta >= 1e-4:
        raise RuntimeError(f"ONNX parity failed: max |Δ| = {delta}")
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
    command += post_filter_flags(post_filter, DEMO_POST_FILTER)
    card["build"] = {"command": command,
                     "total_seconds": round(time.time() - t0, 1),
                     "train_seconds": history.get("train_seconds"),
                     "train_cpu_seconds": history.get("train_cpu_seconds"),
                     "eval_seconds_incl_phantom_generation": round(time.time() - t_eval, 1),
                     "hardware": f"{platform.processor() or platform.machine()}, "
                                 f"{torch.get_num_threads()} torch threads",
                     "torch": torch.__version__, "peak_rss_mb_build": round(peak_rss_mb(), 1)}
    path = write_card(card, out_dir, NAME)
    (Path(run_dir) / "metrics.json").write_text(json.dumps(res, indent=1))
    text = ev.format_tables(res)
    (Path(run_dir) / "table.md").write_text(text + "\n")
    print(text)
    print(f"card: {path}  total {card['build']['total_seconds']} s")
    return card


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Rebuild the demo CT -> pseudo-MRI model from the phantom.")
    p.add_argument("--out", type=Path, default=default_models_dir())
    p.add_argument("--run-dir", type=Path, default=Path("runs/ct_demo"))
    p.add_argument("--config", choices=sorted(CONFIGS), default=DEMO_CONFIG)
    p.add_argument("--steps", type=int, default=None)
    add_chain_arguments(p, CONFIGS, DEMO_RESTART_TO, DEMO_THEN)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--version", default=DEMO_VERSION, help="the card's version")
    p.add_argument("--test-subjects", type=int, default=2, help="per region")
    p.add_argument("--checkpoint", type=Path, default=None, help="skip training, use this")
    p.add_argument("--if-missing", action="store_true", help="do nothing when a valid card exists")
    add_post_filter_argument(p, DEMO_POST_FILTER)
    a = p.parse_args(argv)
    if a.if_missing:
        try:
            load_card(NAME, a.out)
            print(f"{NAME} model present; nothing to do")
            return
        except (UnknownModelError, ValueError):
            pass
    a.out.mkdir(parents=True, exist_ok=True)
    build(a.out, a.run_dir, a.config, a.test_subjects, a.steps, a.threads, version=a.version, checkpoint=a.checkpoint,
          restart_to=tuple(a.restart_to), then=None if a.then is None else tuple(a.then),
          post_filter=post_filter_from(a.post_filter))


if __name__ == "__main__":
    main()
