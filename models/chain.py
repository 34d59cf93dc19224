"""A family's demo recipe, declared once: what it trains on, its first config, the training
stages that follow, and what the export adds. `build_demo` follows it, the card records it
(`build.recipe`), and `models.ensure_demo` rebuilds a missing model from it.

A stage changes the run before it: a warm restart (`restart=True`) resumes that run to
`steps` in all (the learning rate jumps back up, then decays to 0 again); any other stage
is a new run, in its own folder `stage<k>_<name>`, started from the last weights (step 0,
fresh optimisers). `options` change the config from there on; `net.<field>` reaches into
the network's config."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    options: tuple[tuple[str, Any], ...] = ()
    restart: bool = False

    @classmethod
    def of(cls, name: str, restart: bool = False, **options: Any) -> Stage:
        return cls(name, tuple(options.items()), restart)

    def apply(self, cfg: Any) -> Any:
        """The config of this stage, from the config of the run before it."""
        flat = {k: v for k, v in self.options if not k.startswith("net.")}
        net = {k[4:]: v for k, v in self.options if k.startswith("net.")}
        if net:
            flat["net"] = dataclasses.replace(cfg.net, **net)
        return dataclasses.replace(cfg, **({} if self.restart else {"name": self.name}), **flat)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "start": "warm restart" if self.restart else "from the last weights",
                "options": dict(self.options)}


@dataclasses.dataclass(frozen=True)
class Recipe:
    """data: what the runs train on (the card's words); config: the first run's config name,
    `options` changed for it; stages: the runs after it; export: what the export adds (family's
    own keys, e.g. `post_filter`)."""

    task: str
    version: str
    data: str
    config: str
    stages: tuple[Stage, ...] = ()
    options: tuple[tuple[str, Any], ...] = ()
    export: tuple[tuple[str, Any], ...] = ()

    def stages_for(self, config: str, n: int | None = None) -> tuple[Stage, ...]:
        """The first `n` stages (all: None) after the recipe's own config; none after another."""
        return self.stages[:n] if config == self.config else ()

    def first(self, configs: Mapping[str, Any], config: str, **overrides: Any) -> Any:
        """The first run's config: the named one, with the recipe's options when it is the recipe's
        own, then `overrides` that are not None."""
        options = dict(self.options) if config == self.config else {}
        options.update({k: v for k, v in overrides.items() if v is not None})
        return dataclasses.replace(configs[config], **options)

    def resolve(self, configs: Mapping[str, Any]) -> list[Any]:
        """Every run's config, in order (the first, then each stage's)."""
        cfgs = [self.first(configs, self.config)]
        for stage in self.stages:
            cfgs.append(stage.apply(cfgs[-1]))
        return cfgs

    def to_dict(self, stages: Sequence[Stage] | None = None) -> dict[str, Any]:
        stages = self.stages if stages is None else stages
        return {"task": self.task, "version": self.version, "data": self.data, "config": self.config,
                "options": dict(self.options), "stages": [s.to_dict() for s in stages],
                "export": {k: getattr(v, "to_dict", lambda v=v: v)() for k, v in self.export}}


def carried_times(history: Mapping[str, Any]) -> dict[str, float]:
    """The training times a checkpoint's history holds so far (carried into the next stage)."""
    return {k: float(history[k]) for k in ("train_seconds", "train_cpu_seconds") if k in history}


def train_chain(train: Callable[..., Any], cfg: Any, run_dir: Path, stages: Sequence[Stage] = ()) -> Path:
    """`train(cfg, run_dir)`, then each stage (a restart resumes the folder before it; another
    stage starts `stage<k>_<name>` from the last weights). The last checkpoint."""
    folder = Path(run_dir)
    train(cfg, folder)
    k = 0
    for stage in stages:
        last, cfg = folder / "latest.pt", stage.apply(cfg)
        if stage.restart:
            train(cfg, folder, resume=last)
            continue
        k += 1  # a stage may come twice: one folder each
        folder = Path(run_dir) / f"stage{k}_{stage.name}"
        train(cfg, folder, init_from=last)
    return folder / "latest.pt"


def chain_checkpoint(train: Callable[..., Any], first: Any, run_dir: Path, stages: Sequence[Stage],
                     checkpoint: Path | None = None) -> Path:
    """`checkpoint` when given (skip training), else the last checkpoint of `train_chain`."""
    return Path(checkpoint) if checkpoint is not None else train_chain(train, first, run_dir, stages)


def chain_command(module: str, config: str, steps: int | None, threads: int | None, n_stages: int | None) -> str:
    """The command line that rebuilds the chain (the recipe's stages unless `--stages N` says fewer)."""
    return (f"python -m {module} --config {config}" + (f" --steps {steps}" if steps else "")
            + (f" --threads {threads}" if threads else "") + (f" --stages {n_stages}" if n_stages is not None else ""))


def add_chain_arguments(p: Any, recipe: Recipe) -> None:
    """--stages: how many of the recipe's stages follow its first run."""
    p.add_argument("--stages", type=int, default=None,
                   help=f"run only the first N of the recipe's {len(recipe.stages)} stages after config "
                        f"{recipe.config} (default: all; none after another config)")
