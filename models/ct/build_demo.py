"""Rebuild the demo pseudo-MRI model from nothing by its recipe (`models/ct/recipe.py`):
phantom data, unpaired CycleGAN training (config `small`: 3000 steps, warm restarts to 6000
and to 9000 with the NGF structure term on, then five fine-tuning stages; 1 torch thread),
ONNX export of the generator followed by the CT-guided filter; from there on (parity,
scores against the baselines through the registry, card) `models.common.build_demo`.

    nice python -m models.ct.build_demo --out models/weights   # other options: models.common.build_demo
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np

from dicom_synth.multicontrast import load_synthesis_model
from models.chain import Stage, add_chain_arguments
from models.common import build_demo
from models.common import export as common
from models.common.evaluate import conventions
from models.common.layers import with_post_filter
from models.ct import evaluate as ev
from models.ct import memory
from models.ct.export import TASK, build_card, export_onnx, feature_module, parity
from models.ct.phantom import SPLIT_BASE
from models.ct.recipe import DEMO_POST_FILTER, RECIPE
from models.ct.train import CONFIGS, load_generator, train
from models.guided_filter import GuidedFilter, add_post_filter_argument, post_filter_flags, post_filter_from


def _training_data(cfg, history: dict) -> dict:
    return {
        "kind": "phantom, unpaired",
        "generator": "models.ct.phantom (tissue-label anatomy rendered as CT in HU and as T2 MRI)",
        "regions": list(cfg.regions), "ct_subjects_per_region": cfg.n_train,
        "mr_subjects_per_region": cfg.n_train,
        "seeds": f"train {SPLIT_BASE['train']}.. (CT even, MRI odd: no subject in both domains), "
                 f"val {SPLIT_BASE['val']}..",
        "slices_per_subject": cfg.slices_per_subject, "matrix": [cfg.size, cfg.size],
        "ct_slices": history.get("n_ct_slices"), "mr_slices": history.get("n_mr_slices"),
    }


def _metrics(res: dict, cfg, n_test: int) -> dict:
    return {
        "dataset": f"phantom test subjects {SPLIT_BASE['test']}..{SPLIT_BASE['test'] + n_test - 1} per region "
                   f"(abdomen, head_neck), 24 slices {cfg.size}x{cfg.size} each",
        "conventions": conventions("the CT body mask (> -500 HU, filled)"),
        "table": res["table"], "structure_dice": res["structure"],
        "structure_method": "each organ of the CT anatomy re-drawn on each image by a local halfway threshold "
                            "within 4 pixels of its boundary (models.ct.evaluate.halfway_segment; junctions of "
                            "three tissues, half-covered pixels and tissue pairs under 0.1 contrast on the true "
                            "MRI are left as the CT draws them); 3-D Dice per series; truth_mri is the ceiling",
        "baselines": res["baselines"], "n_series": res["n_series"], "n_slices": res["n_slices"],
        "onnx_seconds_per_slice_cpu": res["onnx_seconds_per_slice"],
    }


def _memory(cfg, history: dict) -> dict:
    return {"cpu_peak_rss_mb_measured": history.get("peak_rss_mb"), "gpu_estimate_small": memory.estimate(cfg),
            "gpu_estimate_full": memory.estimate(CONFIGS["full"])}


def _parity(g, onnx_path: Path, cfg) -> float:
    return parity(g, onnx_path, np.random.default_rng(0).uniform(-1, 1, (2, 1, 128, 128)).astype(np.float32))


def build(out_dir: Path, run_dir: Path, config: str = RECIPE.config, n_test: int = 2, steps: int | None = None,
          threads: int | None = None, version: str = RECIPE.version, checkpoint: Path | None = None,
          stages: tuple[Stage, ...] | None = None, post_filter: GuidedFilter | None = DEMO_POST_FILTER,
          n_stages: int | None = None) -> dict:
    """The demo build of `models.common.build_demo` with the CT family's pieces; `post_filter`:
    the CT-guided filter exported after the generator (`GuidedFilter`; None: none)."""
    demo = build_demo.Demo(
        name=TASK, module="models.ct.build_demo", recipe=RECIPE, configs=CONFIGS, train=train, load=load_generator,
        prepare=partial(with_post_filter, spec=post_filter), export=lambda g, path, cfg: export_onnx(g, path),
        parity=_parity, card=partial(build_card, TASK, post_filter=post_filter), training_data=_training_data,
        evaluate=build_demo.phantom_evaluation(TASK, load_synthesis_model, ev, ev.fit_baselines, ev.format_tables),
        metrics=_metrics, feature_module=feature_module, memory=_memory,
        flags=post_filter_flags(post_filter, DEMO_POST_FILTER))
    return build_demo.build(demo, out_dir, run_dir, config, n_test, steps, threads, version, checkpoint, stages,
                            n_stages)[0]


def main(argv: list[str] | None = None) -> None:
    p = common.build_arguments("Rebuild the demo CT -> pseudo-MRI model from the phantom.", CONFIGS, RECIPE.config,
                               "runs/ct_demo", 2, RECIPE.version, per="per region")
    add_chain_arguments(p, RECIPE)
    add_post_filter_argument(p, DEMO_POST_FILTER)
    a = build_demo.parse(p, TASK, argv)
    if a is None:
        return
    build(a.out, a.run_dir, a.config, a.test_subjects, a.steps, a.threads, version=a.version, checkpoint=a.checkpoint,
          post_filter=post_filter_from(a.post_filter), n_stages=a.stages)


if __name__ == "__main__":
    main()
