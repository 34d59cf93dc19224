"""The demo build every family's `build_demo` runs with its recipe: train the recipe's chain
(unless a checkpoint is given), export ONNX with a parity check, write a provisional card,
evaluate the exported file through the registry on phantom test subjects, write the card with
the figures, the training memory and the build record, and print the summary. A family gives
its pieces (`Demo`); what is its own (gate bias, CT memory estimates, staging) is in the
callables it passes.

    nice python -m models.<family>.build_demo --out models/weights
    python -m models.<family>.build_demo --if-missing     # `make run`: only when no card exists
    python -m models.<family>.build_demo --checkpoint runs/<demo>/latest.pt   # skip training

Offline: needs torch (the `train` extra) but no network."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dicom_synth.registry import load_card
from models.chain import Stage, chain_checkpoint, chain_command
from models.common import export as common
from models.common.evaluate import write_report
from models.common.export import write_card


@dataclass(frozen=True)
class Demo:
    """One family's demo build. `load(checkpoint) -> (net, cfg, ckpt)`; `prepare(net)`: the
    module exported (post filter, gate bias); `export(net, path, cfg)`; `parity(net, onnx_path,
    cfg) -> max |delta|`; `card(onnx_path, cfg, **kw)`: the family's `build_card` with its own
    options; `training_data(cfg, history)`; `evaluate(out_dir, n_test, run_dir) -> (res, text)`;
    `metrics(res, cfg, n_test)`; `memory(cfg, history)`: the card's training_memory (None:
    none); `flags`: the command's options beyond the chain's; `cpu_seconds`: the build's CPU
    time in the card; `hardware_note`: appended to the card's hardware."""

    name: str
    module: str
    recipe: Any
    configs: dict
    train: Callable
    load: Callable
    export: Callable
    parity: Callable
    card: Callable
    training_data: Callable
    evaluate: Callable
    metrics: Callable
    feature_module: Callable
    prepare: Callable = lambda net: net
    memory: Callable | None = lambda cfg, history: {"cpu_peak_rss_mb_measured": history.get("peak_rss_mb")}
    flags: str = ""
    cpu_seconds: bool = False
    hardware_note: str = ""


def build(demo: Demo, out_dir: Path, run_dir: Path, config: str, n_test: int, steps: int | None = None,
          threads: int | None = None, version: str | None = None, checkpoint: Path | None = None,
          stages: tuple[Stage, ...] | None = None, n_stages: int | None = None) -> tuple[dict, Path, Any]:
    """Train (unless a checkpoint is given) the recipe's chain (`stages`: by default the
    recipe's first `n_stages` for its config, none for another), export, evaluate and write
    the card into `out_dir`; the card, its path and the exported module."""
    t0, cpu0 = time.time(), time.process_time()
    version = version or demo.recipe.version
    stages = demo.recipe.stages_for(config, n_stages) if stages is None else tuple(stages)
    first = demo.recipe.first(demo.configs, config, steps=steps, threads=threads)
    checkpoint = chain_checkpoint(demo.train, first, run_dir, stages, checkpoint)
    net, cfg, ckpt = demo.load(checkpoint)
    history = common.run_history(checkpoint, ckpt)
    net = demo.prepare(net)
    onnx_path = demo.export(net, Path(out_dir) / f"{demo.name}.onnx", cfg)
    delta = demo.parity(net, onnx_path, cfg)
    common.require_parity(delta)
    training_data = demo.training_data(cfg, history)
    card = demo.card(onnx_path, cfg, version=version, training_data=training_data, history=history)
    write_card(card, out_dir, demo.name)  # provisional: the evaluation runs the file through the registry
    t_eval = time.time()
    res, text = demo.evaluate(out_dir, n_test, run_dir)
    card = demo.card(onnx_path, cfg, version=version, metrics=demo.metrics(res, cfg, n_test),
                     training_data=training_data, history=history)
    card["export_parity_max_abs"] = delta
    if demo.memory is not None:
        card["training_memory"] = demo.memory(cfg, history)
    command = chain_command(demo.module, config, steps, threads, n_stages) + demo.flags
    extra = {"total_cpu_seconds": round(time.process_time() - cpu0, 1)} if demo.cpu_seconds else {}
    card["build"] = common.build_record(command, t0, t_eval, history, recipe=demo.recipe.to_dict(stages), **extra)
    card["build"]["hardware"] += demo.hardware_note
    path = write_card(card, out_dir, demo.name)
    write_report(run_dir, res, text)
    return common.finish_build(path, onnx_path, net, demo.feature_module(net), config, text), path, net


def phantom_evaluation(name: str, load_model: Callable, ev: Any, baselines: Callable, report: Callable) -> Callable:
    """A `Demo.evaluate`: the exported model read through the registry (`load_model(card)`),
    scored by the family's evaluate module `ev` on `ev.phantom_cases(n_test)` against
    `baselines()`, panels in the run folder; `report(res)`: the text of the tables."""

    def evaluate(out_dir: Path, n_test: int, run_dir: Path) -> tuple[dict, str]:
        model = load_model(load_card(name, out_dir))
        res = ev.evaluate(ev.phantom_cases(n_test), model, baselines(), panels_dir=run_dir / "panels")
        return res, report(res)

    return evaluate


def parse(p: argparse.ArgumentParser, name: str, argv: list[str] | None) -> argparse.Namespace | None:
    """The build's command line (`--out` created); None when `--if-missing` finds the model there."""
    a = p.parse_args(argv)
    if a.if_missing and common.model_present(name, a.out):
        return None
    a.out.mkdir(parents=True, exist_ok=True)
    return a
