"""Warm-restart chains of training runs, the way the CT and brain demo weights are made:
one run, then the same run resumed with a schedule of more steps (the learning rate jumps
back up, then decays to 0 again), as often as asked."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any


def train_chain(train: Callable[..., Any], cfg: Any, run_dir: Path, restart_to: Sequence[int]) -> Path:
    """`train(cfg, run_dir)`, then `train(cfg with steps=n, run_dir, resume=latest)` for each
    n in `restart_to` beyond the run's steps; the last checkpoint."""
    run_dir = Path(run_dir)
    train(cfg, run_dir)
    for total in restart_to:
        if total > cfg.steps:
            train(dataclasses.replace(cfg, steps=total), run_dir, resume=run_dir / "latest.pt")
    return run_dir / "latest.pt"


def chain_command(module: str, config: str, configs: Mapping[str, Any], steps: int | None,
                  restart_to: Sequence[int]) -> str:
    """The command line that rebuilds such a chain (the first run's steps, then the restarts;
    a bare `--restart-to` means none)."""
    first = steps or (configs[config].steps if config in configs else None)
    return (f"python -m {module} --config {config}" + (f" --steps {first}" if first else "")
            + " --restart-to" + "".join(f" {n}" for n in restart_to))
