"""The trainer loop every family's `train.py` runs: seeds and threads, resume (weights,
optimiser states, step, history and best figure from a checkpoint) or `--init-from` another
run's weights (step 0), the step loop with a tqdm progress bar, validation every
`val_every` steps, `latest.pt` and `best.pt` with every option of the run, and a history
(`history.json`) with the training time (summed over resumes and chained stages) and peak
memory, which the card records. A family supplies its model (an object with `step`,
`device`, `state(extra)` and `load_state(ckpt)`), one training step and a validation.

Under `torchrun --nproc_per_node N` (WORLD_SIZE > 1) the same code trains data-parallel:
gloo on CPU, NCCL on CUDA; rank 0's initial weights are broadcast, each rank samples from
its own share of the training slices (`DistributedSampler`'s split), the gradients of every
optimiser step are averaged over the ranks (what DistributedDataParallel does; done at the
optimiser because a GAN step runs each network several times and freezes the discriminators
for the generator's step, which DDP's reducer does not allow), only rank 0 writes
checkpoints and history, and at the end every rank's weights are checked equal. Without
WORLD_SIZE nothing of this runs."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import resource
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from tqdm import tqdm

from models.chain import carried_times


class Trainable(Protocol):
    step: int
    device: torch.device

    def state(self, extra: dict | None = None) -> dict: ...

    def load_state(self, ckpt: dict) -> None: ...


class GanModel:
    """Checkpoint state for a GAN: its networks (`nets`, name -> module), `opt_g`, `opt_d`,
    `step` and `cfg`. A family's model class subclasses it and sets those in __init__."""

    cfg: Any
    step: int
    device: torch.device
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer

    @property
    def nets(self) -> dict[str, torch.nn.Module]:
        raise NotImplementedError

    def state(self, extra: dict | None = None) -> dict:
        out = {k: v.state_dict() for k, v in self.nets.items()}
        out.update(opt_g=self.opt_g.state_dict(), opt_d=self.opt_d.state_dict(), step=self.step,
                   config=self.cfg.to_dict(), **(extra or {}))
        return out

    def load_state(self, ckpt: dict) -> None:
        for k, v in self.nets.items():
            v.load_state_dict(ckpt[k])
        self.opt_g.load_state_dict(ckpt["opt_g"])
        self.opt_d.load_state_dict(ckpt["opt_d"])
        self.step = int(ckpt["step"])


def load_network(ckpt_path: Path, from_dict: Callable[[dict], Any], build: Callable[[Any], torch.nn.Module],
                 key: str) -> tuple[torch.nn.Module, Any, dict]:
    """The network `key` of a checkpoint in eval mode, with the run's options:
    (network, config, checkpoint)."""
    ckpt = load_checkpoint(ckpt_path)
    cfg = from_dict(ckpt["config"])
    net = build(cfg.net)
    net.load_state_dict(ckpt[key])
    net.eval()
    return net, cfg, ckpt


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return ru / (1024.0 * 1024.0) if sys.platform == "darwin" else ru / 1024.0


def load_checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def device_of(name: str) -> torch.device:
    """The configured device; CPU when CUDA is asked for and absent."""
    return torch.device(name if name != "cuda" or torch.cuda.is_available() else "cpu")


# ------------------------------------------------------------------ several processes (torchrun)
def world_size() -> int:
    """How many processes train together (torchrun's WORLD_SIZE; 1 without it)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", "0"))


def init_distributed(device: str) -> None:
    """Join torchrun's process group (once): gloo on CPU, NCCL on CUDA."""
    if world_size() > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device_of(device).type == "cuda" else "gloo")


def rank_seed(seed: Any) -> Any:
    """A sampling seed: itself with one process; with several, each rank's own (a list gains
    the rank, an int an offset)."""
    if world_size() == 1:
        return seed
    return [*seed, rank()] if isinstance(seed, list) else seed + 1_000_003 * rank()


def rank_share(data: Any, *fields: str) -> Any:
    """`data` with each named array cut to this rank's share of its slices (DistributedSampler's
    split, no shuffle); `data` itself with one process."""
    if world_size() == 1:
        return data
    from torch.utils.data.distributed import DistributedSampler

    def share(a: Any) -> Any:
        return a[list(DistributedSampler(range(len(a)), num_replicas=world_size(), rank=rank(), shuffle=False))]

    return dataclasses.replace(data, **{f: share(getattr(data, f)) for f in fields})


def _optimisers(model: Any) -> list[torch.optim.Optimizer]:
    return [v for v in vars(model).values() if isinstance(v, torch.optim.Optimizer)]


def _modules(model: Any) -> dict[str, torch.nn.Module]:
    return dict(model.nets) if hasattr(model, "nets") else {
        k: v for k, v in vars(model).items() if isinstance(v, torch.nn.Module)}


def data_parallel(model: Any) -> None:
    """Rank 0's weights on every rank, and each optimiser step on gradients averaged over the ranks."""
    for net in _modules(model).values():
        for t in [*net.parameters(), *net.buffers()]:
            dist.broadcast(t.data, 0)

    def average(opt: torch.optim.Optimizer, *_: Any) -> None:
        for group in opt.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad.div_(world_size())

    for opt in _optimisers(model):
        opt.register_step_pre_hook(average)


def weights_sha256(model: Any) -> str:
    h = hashlib.sha256()
    for name, net in sorted(_modules(model).items()):
        for key, t in sorted(net.state_dict().items()):
            h.update(f"{name}.{key}".encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def ranks_agree(model: Any) -> list[str]:
    """Every rank's weights hash (rank order); raises when they differ."""
    hashes: list[Any] = [None] * world_size()
    dist.all_gather_object(hashes, weights_sha256(model))
    if len(set(hashes)) != 1:
        raise RuntimeError(f"the ranks' weights differ: {hashes}")
    return hashes


def prepare(cfg: Any, out_dir: Path) -> Path:
    """Threads and seed from the config (and torchrun's process group); the run folder."""
    init_distributed(cfg.device)
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir


def resume_or_init(model: Trainable, history: dict, metric: str, resume: Path | None = None,
                   init_from: Path | None = None,
                   init: Callable[[Trainable, Path], dict] | None = None) -> tuple[dict, float]:
    """With `resume`: the checkpoint's weights, optimisers, step, history and best figure.
    With `init_from`: `init(model, path)` loads another run's weights and says what it did
    (recorded as `history["init_from"]`; its training times carry on). (history, best)."""
    if resume is not None:
        ckpt = load_checkpoint(resume)
        model.load_state(ckpt)
        return ckpt.get("history", history), ckpt.get(f"best_{metric}", math.inf)
    if init_from is not None:
        if init is None:
            raise ValueError("this trainer cannot start from another run's weights")
        history["init_from"] = init(model, init_from)
        history.update(carried_times(history["init_from"]))  # times count the whole chain
    return history, math.inf


def fit(model: Trainable, cfg: Any, out_dir: Path, history: dict, best: float, *,
        train_step: Callable[[int], dict[str, float]], validate: Callable[[], float], metric: str,
        postfix: Callable[[dict[str, float]], Mapping[str, str]], desc: str, progress: bool = True) -> dict:
    """Steps `model.step`..`cfg.steps`; validates every `cfg.val_every` steps and at the end,
    saving `latest.pt` (and `best.pt` when `metric`, e.g. "val_mae", improves); writes history.json and
    config.json. The history gains train_seconds and train_cpu_seconds (cumulative over
    resumes), best_<metric>, peak_rss_mb (and peak_gpu_mb on CUDA)."""
    out_dir = Path(out_dir)
    parallel, writer = world_size() > 1, rank() == 0
    if parallel:
        data_parallel(model)
    t_train, cpu_train = time.time(), time.process_time()
    # cumulative over resumes: checkpoints carry the totals so far
    prior_s, prior_cpu = float(history.get("train_seconds", 0.0)), float(history.get("train_cpu_seconds", 0.0))

    def count_time() -> None:
        history["train_seconds"] = round(prior_s + time.time() - t_train, 1)
        history["train_cpu_seconds"] = round(prior_cpu + time.process_time() - cpu_train, 1)

    bar = tqdm(range(model.step, cfg.steps), initial=model.step, total=cfg.steps, disable=not progress or not writer,
               desc=desc)
    for step in bar:
        losses = train_step(step)
        bar.set_postfix(**postfix(losses))
        if (step + 1) % cfg.val_every == 0 or step + 1 == cfg.steps:
            val = validate()
            history["steps"].append({"step": step + 1, metric: round(val, 5),
                                     "seconds": round(time.time() - t_train, 1),
                                     **{k: round(v, 5) for k, v in losses.items()}})
            count_time()
            extra = {"history": history, f"best_{metric}": min(best, val)}
            if val < best:
                best = val
                if writer:
                    torch.save(model.state(extra), out_dir / "best.pt")
            if writer:
                torch.save(model.state(extra), out_dir / "latest.pt")
    count_time()
    history[f"best_{metric}"] = best
    history["peak_rss_mb"] = round(peak_rss_mb(), 1)
    if model.device.type == "cuda":
        history["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    if parallel:
        history["world_size"] = world_size()
        history["rank_weights_sha256"] = ranks_agree(model)
    if writer:
        (out_dir / "history.json").write_text(json.dumps(history, indent=1))
        (out_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1))
    return history


# ------------------------------------------------------------------ the command line
def add_train_arguments(p: argparse.ArgumentParser, configs: Mapping[str, Any], out: str,
                        init_from_example: str | None = None) -> None:
    """--config --out --resume [--init-from] --steps --seed --threads --device --no-progress."""
    p.add_argument("--config", choices=sorted(configs), default="small")
    p.add_argument("--out", type=Path, default=Path(out))
    p.add_argument("--resume", type=Path, default=None, help="checkpoint to continue from")
    if init_from_example:
        p.add_argument("--init-from", type=Path, default=None,
                       help=f"start from this checkpoint's weights (step 0; e.g. {init_from_example})")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--no-progress", action="store_true")


def config_from_args(a: argparse.Namespace, configs: Mapping[str, Any], from_dict: Callable[[dict], Any],
                     **extra: Any) -> Any:
    """The named config, or the resumed run's own; then the options given on the command line."""
    cfg = configs[a.config]
    if a.resume is not None:
        cfg = from_dict(load_checkpoint(a.resume)["config"])
    overrides = {k: v for k, v in (("steps", a.steps), ("seed", a.seed), ("threads", a.threads),
                                   ("device", a.device), *extra.items()) if v is not None}
    return dataclasses.replace(cfg, **overrides)


def print_summary(history: Mapping[str, Any], leave_out: tuple[str, ...] = ("steps", "subjects")) -> None:
    if rank() != 0:
        return
    print(json.dumps({k: v for k, v in history.items() if k not in leave_out}, indent=1))
