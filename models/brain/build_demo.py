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

import time
from pathlib import Path

from dicom_synth.multicontrast import load_synthesis_model
from dicom_synth.registry import load_card
from models.brain import evaluate as ev
from models.brain.export import build_card, export_onnx, feature_module, parity, parity_inputs
from models.brain.gate_bias import add_pair_bias_argument, apply_pair_bias, pair_bias_flags
from models.brain.phantom import SPLIT_BASE
from models.brain.recipe import DEMO_CONFIG, DEMO_GATE_BIAS, DEMO_POST_FILTER, DEMO_RESTART_TO, DEMO_THEN, DEMO_VERSION
from models.brain.train import CONFIGS, load_translator, train
from models.chain import add_chain_arguments, chain_checkpoint, chain_command
from models.common import export as common
from models.common.evaluate import write_report
from models.common.export import write_card
from models.common.layers import with_post_filter
from models.guided_filter import GuidedFilter, add_post_filter_argument, post_filter_flags, post_filter_from

NAME = "brain_contrasts"


def build(out_dir: Path, run_dir: Path, config: str = DEMO_CONFIG, n_test: int = 4, steps: int | None = None,
          threads: int | None = None, version: str = DEMO_VERSION, checkpoint: Path | None = None,
          restart_to: tuple[str | int, ...] = DEMO_RESTART_TO, then: tuple[str, ...] | None = None,
          post_filter: GuidedFilter | None = DEMO_POST_FILTER,
          gate_bias: tuple[tuple[str, str, float], ...] | None = None) -> dict:
    """Train (unless a checkpoint is given) the chain of `models.chain` (`restart_to`, `then`:
    by default the recipe's stages for its config, none for another), export, evaluate,
    write the card; `post_filter`: the
    input-guided filter exported after the network (`GuidedFilter`; None: none); `gate_bias`:
    (source, target, bias) added to those pairs' learnt gate logits before export
    (`models.brain.gate_bias`; by default the demo's for the demo config, none for another)."""
    t0 = time.time()
    if then is None:
        then = DEMO_THEN if config == DEMO_CONFIG else ()
    default_bias = DEMO_GATE_BIAS if config == DEMO_CONFIG else ()
    gate_bias = default_bias if gate_bias is None else tuple(gate_bias)
    checkpoint = chain_checkpoint(train, CONFIGS, config, run_dir, steps, threads, restart_to, then, checkpoint)
    t, cfg, ckpt = load_translator(checkpoint)
    history = common.run_history(checkpoint, ckpt)
    apply_pair_bias(t, gate_bias)
    t = with_post_filter(t, post_filter)
    onnx_path = export_onnx(t, Path(out_dir) / f"{NAME}.onnx", cfg.net.n_contrasts)
    delta = parity(t, onnx_path, *parity_inputs(cfg.net.n_contrasts, h=128, w=128))
    common.require_parity(delta)
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
    card["build"] = common.build_record(command + post_filter_flags(post_filter, DEMO_POST_FILTER)
                                        + pair_bias_flags(gate_bias, default_bias), t0, t_eval, history)
    path = write_card(card, out_dir, NAME)
    text = ev.format_tables(res)
    write_report(run_dir, res, text)
    return common.finish_build(path, onnx_path, t, feature_module(t), config, text)


def main(argv: list[str] | None = None) -> None:
    p = common.build_arguments("Rebuild the demo brain-contrast model from the phantom.", CONFIGS, DEMO_CONFIG,
                               "runs/brain_demo", 4, DEMO_VERSION)
    add_chain_arguments(p, CONFIGS, DEMO_RESTART_TO, DEMO_THEN)
    add_post_filter_argument(p, DEMO_POST_FILTER)
    add_pair_bias_argument(p, DEMO_GATE_BIAS, "for the demo config")
    a = p.parse_args(argv)
    if a.if_missing and common.model_present(NAME, a.out):
        return
    a.out.mkdir(parents=True, exist_ok=True)
    build(a.out, a.run_dir, a.config, a.test_subjects, a.steps, a.threads, version=a.version, checkpoint=a.checkpoint,
          restart_to=tuple(a.restart_to), then=None if a.then is None else tuple(a.then),
          post_filter=post_filter_from(a.post_filter), gate_bias=None if a.gate_bias is None else tuple(a.gate_bias))


if __name__ == "__main__":
    main()
