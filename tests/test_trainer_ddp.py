"""The shared trainer under torchrun: two CPU processes (gloo) train the pseudo-MRI `tiny`
config data-parallel; rank 0 alone writes the run, each rank trains on its half of the
slices, and both end with the same weights, the ones in rank 0's checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parent.parent


def test_two_process_torchrun_trains_tiny_and_the_ranks_agree(tmp_path: Path) -> None:
    from models.common.trainer import load_checkpoint, weights_sha256
    from models.ct.train import CONFIGS, CycleGAN, TrainConfig

    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "models.ct.train", "--config", "tiny", "--out", str(out), "--threads", "1", "--no-progress"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "config.json", "history.json", "latest.pt"]
    history = json.loads((out / "history.json").read_text())
    assert history["world_size"] == 2
    ranks = history["rank_weights_sha256"]
    assert len(ranks) == 2 and ranks[0] == ranks[1]
    ckpt = load_checkpoint(out / "latest.pt")
    assert ckpt["step"] == CONFIGS["tiny"].steps
    model = CycleGAN(TrainConfig.from_dict(ckpt["config"]))
    model.load_state(ckpt)
    assert weights_sha256(model) == ranks[0]  # what rank 0 saved is what every rank holds
    # each rank sampled from its own half of the CT slices (DistributedSampler's split)
    from models.ct.train import build_domains

    assert history["n_ct_slices"] * 2 == len(build_domains(CONFIGS["tiny"], progress=False).ct)
    assert done.stdout.count('"world_size": 2') == 1  # rank 0 alone prints the summary
