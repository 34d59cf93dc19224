"""Chains of training runs, the way the CT and brain demo weights are made: one run, then
the same run resumed with a schedule of more steps (warm restarts: the learning rate jumps
back up, then decays to 0 again; a restart may switch loss weights, "9000:lambda_ngf=20"),
then fine-tuning stages, each another config started from the last checkpoint's weights
(`--then small_paired_change`)."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any


@dataclasses.dataclass(frozen=True)
class Restart:
    """Resume to `steps` in all, with `overrides` of the run's options from then on."""

    steps: int
    overrides: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def parse(cls, text: str | int) -> Restart:
        """"6000" or "9000:lambda_ngf=20,lambda_edge=0"."""
        steps, _, rest = str(text).partition(":")
        pairs = []
        for item in filter(None, rest.split(",")):
            key, eq, value = item.partition("=")
            if not eq:
                raise ValueError(f"restart option {item!r} is not key=value")
            pairs.append((key.strip(), _number(value.strip())))
        return cls(int(steps), tuple(pairs))

    def __str__(self) -> str:
        return str(self.steps) + (":" + ",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                                                 for k, v in self.overrides) if self.overrides else "")


def _number(value: str) -> Any:
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def carried_times(history: Mapping[str, Any]) -> dict[str, float]:
    """The training times a checkpoint's history holds so far (carried into the next stage)."""
    return {k: float(history[k]) for k in ("train_seconds", "train_cpu_seconds") if k in history}


def train_chain(train: Callable[..., Any], cfg: Any, run_dir: Path, restart_to: Sequence[Restart | int | str],
                then: Sequence[Any] = ()) -> Path:
    """`train(cfg, run_dir)`; then `train(cfg with steps=n and the restart's overrides, run_dir,
    resume=latest)` for each restart beyond the run's steps; then each config of `then` in
    its own folder under run_dir (`stage1_<name>`, ...), started from the previous
    checkpoint's weights (`init_from`). The last checkpoint."""
    run_dir = Path(run_dir)
    train(cfg, run_dir)
    for r in map(Restart.parse, restart_to):
        if r.steps > cfg.steps:
            cfg = dataclasses.replace(cfg, steps=r.steps, **dict(r.overrides))
            train(cfg, run_dir, resume=run_dir / "latest.pt")
    last = run_dir / "latest.pt"
    for k, stage in enumerate(then, 1):  # a config may come twice: one folder per stage
        stage = dataclasses.replace(stage, threads=cfg.threads)
        train(stage, run_dir / f"stage{k}_{stage.name}", init_from=last)
        last = run_dir / f"stage{k}_{stage.name}" / "latest.pt"
    return last


def chain_checkpoint(train: Callable[..., Any], configs: Mapping[str, Any], config: str, run_dir: Path,
                     steps: int | None, threads: int | None, restart_to: Sequence[Restart | int | str],
                     then: Sequence[str], checkpoint: Path | None = None) -> Path:
    """`checkpoint` when given (skip training), else the last checkpoint of `train_chain`
    from the named config (with `steps` and `threads` when given) and the named stages."""
    if checkpoint is not None:
        return Path(checkpoint)
    overrides = {k: v for k, v in (("steps", steps), ("threads", threads)) if v is not None}
    return train_chain(train, dataclasses.replace(configs[config], **overrides), run_dir, restart_to,
                       [configs[c] for c in then])


def chain_command(module: str, config: str, configs: Mapping[str, Any], steps: int | None,
                  restart_to: Sequence[Restart | int | str], then: Sequence[str] = ()) -> str:
    """The command line that rebuilds such a chain (the first run's steps, then the restarts;
    a bare `--restart-to` means none; then the fine-tuning configs)."""
    first = steps or (configs[config].steps if config in configs else None)
    return (f"python -m {module} --config {config}" + (f" --steps {first}" if first else "")
            + " --restart-to" + "".join(f" {Restart.parse(r)}" for r in restart_to)
            + (" --then " + " ".join(then) if then else ""))


def add_chain_arguments(p: argparse.ArgumentParser, configs: Mapping[str, Any], restart_to: Sequence[str | int],
                        then: Sequence[str]) -> None:
    """--restart-to and --then, defaulting to how the committed demo weights were made."""
    p.add_argument("--restart-to", nargs="*", default=[str(r) for r in restart_to],
                   help="then resume to each of these step counts in turn (warm restarts; '9000:lambda_ngf=20' "
                        "also changes options from there); none: no restart")
    p.add_argument("--then", nargs="*", choices=sorted(configs), default=None,
                   help="then fine-tune with each of these configs in turn, from the last weights; none: no "
                        f"stage (default: {' '.join(then) or 'none'} after the demo config, none after another)")
