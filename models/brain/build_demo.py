"""Rebuild the demo brain-contrast model from nothing by its recipe (`models/brain/recipe.py`):
phantom subjects, seed 002's conditional translator (config `small`: 3000 steps, a warm
restart to 4500, then ten fine-tuning stages; 1 torch thread), ONNX export with the
input-guided filter and the T1 -> T1c gate bias, all 12 directions scored against both
baselines. The flow (parity, evaluation through the registry, card): `models.common.build_demo`.

    nice python -m models.brain.build_demo --out models/weights   # other options: models.common.build_demo
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from dicom_synth.multicontrast import load_synthesis_model
from models.brain import evaluate as ev
from models.brain.export import TASK, build_card, export_onnx, feature_module, parity, parity_inputs
from models.brain.gate_bias import add_pair_bias_argument, apply_pair_bias, pair_bias_flags
from models.brain.phantom import SPLIT_BASE
from models.brain.recipe import DEMO_GATE_BIAS, DEMO_POST_FILTER, RECIPE
from models.brain.train import CONFIGS, load_translator, train
from models.chain import Stage, add_chain_arguments
from models.common import build_demo
from models.common import export as common
from models.common.evaluate import conventions
from models.common.layers import with_post_filter
from models.guided_filter import GuidedFilter, add_post_filter_argument, post_filter_flags, post_filter_from


def _training_data(cfg, history: dict) -> dict:
    return {
        "kind": "phantom, unpaired (one random contrast per training image)",
        "generator": "models.brain.phantom (PD/T1/T2/gadolinium signal equations, tumour with rim and oedema)",
        "train_subjects": cfg.n_train, "train_seeds": f"{SPLIT_BASE['train']}..", "val_subjects": cfg.n_val,
        "val_seeds": f"{SPLIT_BASE['val']}..", "slices_per_subject": cfg.slices_per_subject,
        "matrix": [cfg.size, cfg.size], "slices": history.get("n_slices"),
    }


def _metrics(res: dict, cfg, n_test: int) -> dict:
    return {
        "dataset": f"phantom test subjects {SPLIT_BASE['test']}..{SPLIT_BASE['test'] + n_test - 1}, "
                   f"16 slices {cfg.size}x{cfg.size}, every source -> target direction",
        "conventions": conventions("the head mask of the input series"),
        "table": res["table"], "directions": res["directions"], "n_series": res["n_series"],
        "n_scored_series": res["n_scored_series"],
        "onnx_seconds_per_output_slice_cpu": res["onnx_seconds_per_output_slice"],
        "paper_seed002": "no translation metrics reported (segmentation MSE 0.033 / SSIM 0.954 on real data)",
    }


def _prepare(net, post_filter: GuidedFilter | None, gate_bias: tuple) -> object:
    apply_pair_bias(net, gate_bias)
    return with_post_filter(net, post_filter)


def build(out_dir: Path, run_dir: Path, config: str = RECIPE.config, n_test: int = 4, steps: int | None = None,
          threads: int | None = None, version: str = RECIPE.version, checkpoint: Path | None = None,
          stages: tuple[Stage, ...] | None = None, post_filter: GuidedFilter | None = DEMO_POST_FILTER,
          gate_bias: tuple[tuple[str, str, float], ...] | None = None, n_stages: int | None = None) -> dict:
    """The demo build of `models.common.build_demo` with the brain family's pieces;
    `post_filter`: the input-guided filter exported after the network (`GuidedFilter`; None:
    none); `gate_bias`: (source, target, bias) added to those pairs' learnt gate logits before
    export (`models.brain.gate_bias`; by default the demo's for the demo config, none for
    another)."""
    default_bias = DEMO_GATE_BIAS if config == RECIPE.config else ()
    gate_bias = default_bias if gate_bias is None else tuple(gate_bias)
    demo = build_demo.Demo(
        name=TASK, module="models.brain.build_demo", recipe=RECIPE, configs=CONFIGS, train=train,
        load=load_translator, prepare=partial(_prepare, post_filter=post_filter, gate_bias=gate_bias),
        export=lambda t, path, cfg: export_onnx(t, path, cfg.net.n_contrasts),
        parity=lambda t, path, cfg: parity(t, path, *parity_inputs(cfg.net.n_contrasts, h=128, w=128)),
        card=partial(build_card, TASK, post_filter=post_filter, gate_bias=gate_bias),
        training_data=_training_data, metrics=_metrics, feature_module=feature_module,
        evaluate=build_demo.phantom_evaluation(TASK, load_synthesis_model, ev, ev.fit_histmatch, ev.format_tables),
        flags=post_filter_flags(post_filter, DEMO_POST_FILTER) + pair_bias_flags(gate_bias, default_bias))
    return build_demo.build(demo, out_dir, run_dir, config, n_test, steps, threads, version, checkpoint, stages,
                            n_stages)[0]


def main(argv: list[str] | None = None) -> None:
    p = common.build_arguments("Rebuild the demo brain-contrast model from the phantom.", CONFIGS, RECIPE.config,
                               "runs/brain_demo", 4, RECIPE.version)
    add_chain_arguments(p, RECIPE)
    add_post_filter_argument(p, DEMO_POST_FILTER)
    add_pair_bias_argument(p, DEMO_GATE_BIAS, "for the demo config")
    a = build_demo.parse(p, TASK, argv)
    if a is None:
        return
    build(a.out, a.run_dir, a.config, a.test_subjects, a.steps, a.threads, version=a.version, checkpoint=a.checkpoint,
          post_filter=post_filter_from(a.post_filter), gate_bias=None if a.gate_bias is None else tuple(a.gate_bias),
          n_stages=a.stages)


if __name__ == "__main__":
    main()
