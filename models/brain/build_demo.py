"""Rebuild the demo brain-contrast model from nothing: phantom subjects, unpaired training of
seed 002's conditional translator (config `small_paired`: 3000 steps, a warm restart to 4500,
then the fine-tuning stages `small_paired_change`, twice `small_paired_change_gate`, twice
`small_paired_change_gate_pair`, `small_paired_change_gate_pair_bal` and
`small_paired_change30_gate_pair_bal`, 1500 steps each; 2 CPU cores), ONNX export with a parity
check, evaluation of all 12 directions on phantom test subjects against both baselines
through the registry, and the model card with the figures.

    nice python -m models.brain.build_demo --out models/weights
    python -m models.brain.build_demo --if-missing        # `make run`: only when no card exists
    python -m models.brain.build_demo --checkpoint runs/brain_demo/latest.pt   # skip training

Offline: needs torch (the `train` extra) but no network.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from pathlib import Path

import torch

from dicom_synth.multicontrast import load_synthesis_model
from dicom_synth.registry import UnknownModelError, default_models_dir, load_card
from models.brain import evaluate as ev
from models.brain.export import build_card, export_onnx, parity, parity_inputs
from models.brain.gate_bias import add_pair_bias_argument, apply_pair_bias, pair_bias_flags
from models.brain.phantom import SPLIT_BASE
from models.brain.train import CONFIGS, load_translator, train
from models.chain import add_chain_arguments, chain_command, train_chain
from models.ct.networks import with_post_filter
from models.ct.train import peak_rss_mb
from models.dce.export import write_card
from models.guided_filter import GuidedFilter, add_post_filter_argument, post_filter_flags, post_filter_from

NAME = "brain_contrasts"


DEMO_CONFIG = "small_paired"  # the seed's losses plus an L1 pull to the registered sibling (see train.py)
DEMO_VERSION = "0.6.0"
DEMO_RESTART_TO: tuple[str | int, ...] = (4500,)  # 3000 steps, then a warm restart to 4500
# then change-weighted paired L1, twice the same with the input gate, twice with the gate
# knowing the source and told where T1 <-> T1c repeat the input, then that term balanced
# over the rim, then the rim weighted 3x (how v0.4.0 was made; v0.5.0 is the same network);
# then (v0.6.0) that stage on 96 training subjects, again with the decoder's own image pulled
# to the target, and twice on 192 subjects with that term at 20 (3000 steps each)
DEMO_THEN: tuple[str, ...] = ("small_paired_change", "small_paired_change_gate", "small_paired_change_gate",
                              "small_paired_change_gate_pair", "small_paired_change_gate_pair",
                              "small_paired_change_gate_pair_bal", "small_paired_change30_gate_pair_bal",
                              "small_paired_change30_gate_pair_bal_n96", "small_paired_change30_gate_pair_bal_n96_dec",
                              "small_paired_change30_gate_pair_bal_n192_dec20",
                              "small_paired_change30_gate_pair_bal_n192_dec20")
# exported after the network (v0.5.0 on): chosen on the validation subjects (42000..42001;
# pooled body SSIM 0.865 -> 0.887, MAE 0.0368 -> 0.0348 with v0.4.0's network)
DEMO_POST_FILTER = GuidedFilter(radius=2, sigma_px=2.0, sigma_range=0.04)
# added to the T1 -> T1c pair's learnt gate logit before export (v0.6.0 on): the smallest bias
# of the grid at which T1 -> T1c beats both baselines on every metric on the validation
# subjects 52000..52003 (`python -m models.brain.gate_bias --checkpoint ...`: 5.5; tumour
# error 0.74 of the input's there, 0.48 without the bias)
DEMO_GATE_BIAS: tuple[tuple[str, str, float], ...] = (("t1", "t1c", 5.5),)


def build(out_dir: Path, run_dir: Path, config: str = DEMO_CONFIG, n_test: int = 4, steps: int | None = None,
          threads: int | None = None, version: str = DEMO_VERSION, checkpoint: Path | None = None,
          restart_to: tuple[str | int, ...] = DEMO_RESTART_TO, then: tuple[str, ...] | None = None,
          post_filter: GuidedFilter | None = DEMO_POST_FILTER,
          gate_bias: tuple[tuple[str, str, float], ...] | None = None) -> dict:
    """Train (unless a checkpoint is given), export, evaluate, write the card. `restart_to`:
    after the run, resume it with a schedule of each of these many steps in turn (warm
    restarts: the learning rate jumps back up, then decays to 0 again), as the committed
    demo weights were made; `then`: fine-tuning configs after that (`models.chain`; by default
    the demo's stages for the demo config, none for another); `post_filter`: the
    input-guided filter exported after the network (`GuidedFilter`; None: none); `gate_bias`:
    (source, target, bias) added to those pairs' learnt gate logits before export
    (`models.brain.gate_bias`; by default the demo's for the demo config, none for another)."""
    t0 = time.time()
    if then is None:
        then = DEMO_THEN if config == DEMO_CONFIG else ()
    default_bias = DEMO_GATE_BIAS if config == DEMO_CONFIG else ()
    gate_bias = default_bias if gate_bias is None else tuple(gate_bias)
    if checkpoint is None:
        overrides = {k: v for k, v in (("steps", steps), ("threads", threads)) if v is not None}
        checkpoint = train_chain(train, dataclasses.replace(CONFIGS[config], **overrides), run_dir, restart_to,
                                 [CONFIGS[c] for c in then])
    t, cfg, ckpt = load_translator(checkpoint)
    hist_file = Path(checkpoint).parent / "history.json"
    history = json.loads(hist_file.read_text()) if hist_file.exists() else ckpt.get("history", {})
    apply_pair_bias(t, gate_bias)
    t = with_post_filter(t, post_filter)
    onnx_path = export_onnx(t, Path(out_dir) / f"{NAME}.onnx", cfg.net.n_contrasts)
    delta = parity(t, onnx_path, *parity_inputs(cfg.net.n_contrasts, h=128, w=128))
    if delta >= 1e-4:
        raise RuntimeError(f"ONNX parity failed: max |Δ| = {delta}")
    training_data = {
        "kind": "phantom, unpaired (one random contrast per training image)",
        "generator": "models.brain.phantom (PD/T1/T2/gadolinium signal equations, tumour with rim and oedema)",
        "train_subjects": cfg.n_train, "train_seeds": f"{SPLIT_BASE['train']}..", "val_subjects": cfg.n_val,
        "val_seeds": f"{SPLIT_BASE['val']}..", "slices_per_subject": cfg.slices_per_subject,
        "matrix": [cfg.size, cfg.size], "slices": history.get("n_slices"),
    }
    card = build_card(NAME, onnx_path, cfg, version=version, training_data=training_data, history=history,
                      post_filter=post_filter, gate_bias=gate_bias)
    write_card(card, out_dir, NAME)  # provisional: the evaluation runs the file through the registry
    model = load_synthesis_model(load_card(NAME, out_dir))
    t_eval = time.time()
    res = ev.evaluate(ev.phantom_cases(n_test), model, ev.fit_histmatch(), panels_dir=run_dir / "panels")
    metrics = {
        "dataset": f"phantom test subjects {SPLIT_BASE['test']}..{SPLIT_BASE['test'] + n_test - 1}, "
                   f"16 slices {cfg.size}x{cfg.size}, every source -> target direction",
        "conventions": {"unit": "per-slice min-max to [0,1], data_range 1, whole image",
                        "body": "same images, metrics restricted to the head mask of the input series"},
        "table": res["table"], "directions": res["directions"], "n_series": res["n_series"],
        "n_scored_series": res["n_scored_series"],
        "onnx_seconds_per_output_slice_cpu": res["onnx_seconds_per_output_slice"],
        "paper_seed002": "no translation metrics reported (segmentation MSE 0.033 / SSIM 0.954 on real data)",
    }
    card = build_card(NAME, onnx_path, cfg, version=version, metrics=metrics, training_data=training_data,
                      history=history, post_filter=post_filter, gate_bias=gate_bias)
    card["export_parity_max_abs"] = delta
    card["training_memory"] = {"cpu_peak_rss_mb_measured": history.get("peak_rss_mb")}
    command = chain_command("models.brain.build_demo", config, CONFIGS, steps, restart_to, then)
    card["build"] = {"command": command + post_filter_flags(post_filter, DEMO_POST_FILTER)
                     + pair_bias_flags(gate_bias, default_bias),
                     "total_seconds": round(time.time() - t0, 1), "train_seconds": history.get("train_seconds"),
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
    p = argparse.ArgumentParser(description="Rebuild the demo brain-contrast model from the phantom.")
    p.add_argument("--out", type=Path, default=default_models_dir())
    p.add_argument("--run-dir", type=Path, default=Path("runs/brain_demo"))
    p.add_argument("--config", choices=sorted(CONFIGS), default=DEMO_CONFIG)
    p.add_argument("--steps", type=int, default=None)
    add_chain_arguments(p, CONFIGS, DEMO_RESTART_TO, DEMO_THEN)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--version", default=DEMO_VERSION, help="the card's version")
    p.add_argument("--test-subjects", type=int, default=4)
    p.add_argument("--checkpoint", type=Path, default=None, help="skip training, use this")
    p.add_argument("--if-missing", action="store_true", help="do nothing when a valid card exists")
    add_post_filter_argument(p, DEMO_POST_FILTER)
    add_pair_bias_argument(p, DEMO_GATE_BIAS, "for the demo config")
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
          post_filter=post_filter_from(a.post_filter), gate_bias=None if a.gate_bias is None else tuple(a.gate_bias))


if __name__ == "__main__":
    main()
