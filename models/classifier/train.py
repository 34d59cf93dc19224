"""Train the pixel series classifier on phantom series, calibrate it, export ONNX + card.

    nice python -m models.classifier.train            # demo config: 2 CPU cores, ~11 min
    nice python -m models.classifier.train --per-class 300 --epochs 12 --width 32
    nice python -m models.classifier.train --real labelled/   # plus your own series

`--real DIR` adds a hospital's own series, one folder per class name
(`models/classifier/realdata.py`): a fifth of them (by SeriesInstanceUID hash) joins the
validation split, the rest the training split, repeated `--real-repeat` times.

Writes models/weights/series_classifier.onnx and .card.json (checkpoint under runs/).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dicom_synth.classify.labels import LABELS
from dicom_synth.classify.pixelmodel import N_SLICES, SIZE
from dicom_synth.registry import CARD_SUFFIX, sha256_file
from models.classifier.data import build_split
from models.classifier.network import NetConfig, SeriesResNet, WithFeatures
from models.classifier.realdata import LabelledSet, load_labelled_folder

ROOT = Path(__file__).resolve().parents[2]
NAME = "series_classifier"
TASK = "series_classification"
OPSET = 17


@dataclass(frozen=True)
class TrainConfig:
    per_class: int = 100
    val_per_class: int = 15
    epochs: int = 12
    batch: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    width: int = 16
    threads: int = 2
    workers: int = 2
    seed: int = 0
    real: str | None = None  # folder of labelled real series (realdata.py)
    real_repeat: int = 5
    exclude_sources: tuple[str, ...] = ()  # phantom families left out (heldout.py)


CONFIGS: dict[str, TrainConfig] = {
    # Seed 001 as far as it says: a ResNet (standard width 64 here) on ~287 images per class
    # (its data set I: 862 images of 3 sequence classes); epochs and learning rate not given.
    "seed": TrainConfig(per_class=287, width=64, threads=8),
    "full": TrainConfig(per_class=300, width=32, threads=8),  # a GPU or a bigger CPU
    "small": TrainConfig(),  # the demo: 2 CPU cores, ~11 min
    "tiny": TrainConfig(per_class=2, val_per_class=1, epochs=1, batch=16, width=4, workers=1),  # seconds, for tests
}


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Left-right flips, small shifts and intensity scaling (CT HU channel kept exact).
    Domain randomisation (intensity curves, bias, noise, blur, resolution, zoom) was tried
    and lost on held-out phantom families: models/EXPERIMENTS.md."""
    n = x.shape[0]
    flip = torch.rand(n, generator=g) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    dy, dx = (int(v) for v in torch.randint(-8, 9, (2,), generator=g))
    x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
    scale = 0.85 + 0.3 * torch.rand(n, 1, 1, generator=g)
    x = x.clone()
    x[:, 0] = (x[:, 0] * scale).clamp(0, 1.5)
    return x


def series_logp(model: nn.Module, x: np.ndarray, series: np.ndarray, batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Mean slice log-probability per series (the runtime's aggregation) and series ids."""
    model.eval()
    outs = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            outs.append(torch.log_softmax(model(torch.from_numpy(x[i:i + batch].astype(np.float32))), 1).numpy())
    logp = np.concatenate(outs)
    ids = np.unique(series)
    return np.stack([logp[series == s].mean(0) for s in ids]), ids


def fit_temperature(logp: np.ndarray, y: np.ndarray) -> float:
    """The temperature minimising the series-level NLL (Guo et al. 2017), no lower than
    1/N_SLICES: that is the product of the slices' likelihoods (independent slices), the
    sharpest aggregation with a meaning. Without errors on the validation split the NLL
    alone would run to zero."""
    best_t, best_nll = 1.0, np.inf
    for t in np.exp(np.linspace(np.log(1.0 / N_SLICES), np.log(8.0), 60)):
        z = logp / t
        z = z - z.max(1, keepdims=True)
        nll = -(z[np.arange(len(y)), y] - np.log(np.exp(z).sum(1))).mean()
        if nll < best_nll:
            best_t, best_nll = float(t), float(nll)
    return best_t


@dataclass
class Fitted:
    model: SeriesResNet
    net: NetConfig
    temperature: float
    history: list
    val_acc: float
    x_val: np.ndarray
    real_counts: dict[str, int]
    started: float


def fit(cfg: TrainConfig, real: LabelledSet | None = None) -> Fitted:
    """Train on the phantom train split (less `exclude_sources`) and the `real` series (the
    folder `cfg.real`, or a set already split, as `python -m models retrain` splits by patient);
    keep the epoch with the best validation series accuracy; fit the temperature."""
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    t0 = time.time()
    xtr, ytr, _, src = build_split("train", cfg.per_class, cfg.workers)
    keep = ~np.isin(src, cfg.exclude_sources)
    xtr, ytr = xtr[keep], ytr[keep]
    xva, yva, sva, src = build_split("val", cfg.val_per_class, cfg.workers)
    keep = ~np.isin(src, cfg.exclude_sources)
    xva, yva, sva = xva[keep], yva[keep], sva[keep]
    real_counts: dict[str, int] = {}
    if cfg.real or real is not None:
        real = real or load_labelled_folder(Path(cfg.real))
        real_counts = real.counts
        for why in real.skipped:
            print(f"real series skipped: {why}", flush=True)
        rx, ry, _ = real.train
        if len(rx):
            xtr = np.concatenate([xtr] + [rx] * cfg.real_repeat)
            ytr = np.concatenate([ytr] + [ry] * cfg.real_repeat)
        vx, vy, vs = real.val
        if len(vx):
            xva, yva, sva = np.concatenate([xva, vx]), np.concatenate([yva, vy]), np.concatenate([sva, vs])
        print(f"real series: {real_counts}", flush=True)
    t_data = time.time() - t0
    print(f"data: train {len(xtr)} slices, val {len(xva)} slices ({t_data:.0f} s)", flush=True)
    net_cfg = NetConfig(num_classes=len(LABELS), width=cfg.width)
    model = SeriesResNet(net_cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * ((len(xtr) + cfg.batch - 1) // cfg.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps, pct_start=0.2)
    loss_fn = nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(cfg.seed)
    ytr_t = torch.from_numpy(ytr)
    history = []
    best_acc, best_state = -1.0, None
    for epoch in range(cfg.epochs):
        model.train()
        perm = torch.randperm(len(xtr), generator=g)
        total, count = 0.0, 0
        for i in range(0, len(perm), cfg.batch):
            idx = perm[i:i + cfg.batch]
            xb = augment(torch.from_numpy(xtr[idx.numpy()].astype(np.float32)), g)
            loss = loss_fn(model(xb), ytr_t[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
            count += len(idx)
        logp, ids = series_logp(model, xva, sva)
        yv = np.array([yva[sva == s][0] for s in ids])
        acc = float((logp.argmax(1) == yv).mean())
        history.append({"epoch": epoch + 1, "train_loss": round(total / count, 4), "val_series_acc": round(acc, 4),
                        "elapsed_s": round(time.time() - t0, 1)})
        print(history[-1], flush=True)
        if acc >= best_acc:
            best_acc, best_state = acc, {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    model.eval()
    logp, ids = series_logp(model, xva, sva)
    yv = np.array([yva[sva == s][0] for s in ids])
    temperature = fit_temperature(logp, yv)
    return Fitted(model, net_cfg, temperature, history, best_acc, xva[:16].astype(np.float32), real_counts, t0)


def train(cfg: TrainConfig, out_dir: Path, run_dir: Path) -> dict:
    """fit, then save the checkpoint and export ONNX + card."""
    f = fit(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": f.model.state_dict(), "net": f.net.to_dict(), "train": asdict(cfg),
                "history": f.history, "temperature": f.temperature}, run_dir / "best.pt")
    onnx_path = export(f.model, out_dir / f"{NAME}.onnx")
    delta = parity(f.model, onnx_path, f.x_val)
    card = build_card(onnx_path, cfg, f, delta, time.time() - f.started)
    (out_dir / f"{NAME}{CARD_SUFFIX}").write_text(json.dumps(card, indent=2) + "\n")
    print(f"exported {onnx_path} (parity max|Δ| {delta:.2e}, temperature {f.temperature:.3f}, "
          f"val series accuracy {f.val_acc:.4f}, {time.time() - f.started:.0f} s)", flush=True)
    return card


def export(model: SeriesResNet, path: Path) -> Path:
    """Trace in eval mode (BatchNorm on running statistics, as validated) to ONNX, with two
    outputs: "logits" (N, classes) and "features" (N, F), the pooled activations the fc
    layer reads (the domain guard's reference distribution)."""
    model.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(WithFeatures(model).eval(), (torch.zeros(1, 2, SIZE, SIZE),), str(path),
                      input_names=["input"], output_names=["logits", "features"],
                      dynamic_axes={"input": {0: "slices"}, "logits": {0: "slices"}, "features": {0: "slices"}},
                      opset_version=OPSET, dynamo=False)
    return path


def parity(model: nn.Module, onnx_path: Path, x: np.ndarray) -> float:
    import onnxruntime as ort

    with torch.no_grad():
        ref, ref_f = (t.numpy() for t in WithFeatures(model).eval()(torch.from_numpy(x)))
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    logits, features = sess.run(["logits", "features"], {"input": x})
    return float(max(np.abs(logits - ref).max(), np.abs(features - ref_f).max()))


def build_card(onnx_path: Path, cfg: TrainConfig, f: Fitted, delta: float, seconds: float) -> dict:
    return {
        "name": NAME,
        "task": TASK,
        "version": "1.2.0",
        "onnx_file": onnx_path.name,
        "sha256": sha256_file(onnx_path),
        "output_label": "series class",
        "architecture": "ResNet-18 topology (BasicBlock x [2,2,2,2], 7x7/2 stem + max-pool), "
                        f"width {f.net.width}, BatchNorm exported in eval mode",
        "net": f.net.to_dict(),
        "input": {"name": "input", "layout": "NCHW", "channels": 2, "dtype": "float32",
                  "height": SIZE, "width": SIZE, "slices_per_series": N_SLICES,
                  "slice_choice": "30 %, 50 %, 70 % of the sorted stack (all when 3 or fewer)",
                  "channel_0": "(x - p1) / (p99.5 - p1) over the chosen slices, clipped 0..1.5",
                  "channel_1": "CT: (HU + 1000) / 3000 clipped 0..1; MR: zeros",
                  "resize": "pad to square with the slice minimum, area-average to 128x128"},
        "outputs": {"logits": "(N, classes) per slice, in output_mapping.labels order",
                    "features": f"(N, {f.net.width * 8}) global-average-pooled activations before the fc layer"},
        "normalisation": {"kind": "slices_percentile", "percentiles": [1.0, 99.5], "clip": [0.0, 1.5]},
        "output_mapping": {"kind": "logits", "labels": list(LABELS), "temperature": round(f.temperature, 4),
                           "aggregation": "mean slice log-softmax over the series, divided by temperature"},
        "training": asdict(cfg),
        "training_history": f.history,
        "training_data": {"source": "models.classifier.phantom (numpy phantom of every class; part of "
                                    "the breast T1 and early DCE from models.dce.phantom, of the brain "
                                    "from models.brain.phantom, of the CT from models.ct.phantom)",
                          "train_series": cfg.per_class * len(LABELS),
                          "val_series": cfg.val_per_class * len(LABELS), "seconds": round(seconds),
                          "real_series_per_class": f.real_counts},
        "metrics": {"val_series_accuracy": round(f.val_acc, 4)},
        "export_parity_max_abs": delta,
        "intended_use": "Recognising the class of an incoming series (seed 001) so the service "
                        "routes it; fused with header rules, never used alone to route.",
        "limitations": ("Trained on phantoms only" if not f.real_counts else
                        f"Trained on phantoms and {sum(f.real_counts.values())} real series")
                       + ": its probabilities on real scanners are not calibrated; the fusion turns "
                         "header/pixel disagreement into `unknown`.",
        "created": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "opset": OPSET,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = TrainConfig()
    p.add_argument("--per-class", type=int, default=d.per_class)
    p.add_argument("--val-per-class", type=int, default=d.val_per_class)
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--width", type=int, default=d.width)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--threads", type=int, default=d.threads)
    p.add_argument("--workers", type=int, default=d.workers)
    p.add_argument("--out", type=Path, default=ROOT / "models" / "weights")
    p.add_argument("--run-dir", type=Path, default=ROOT / "runs" / "classifier")
    p.add_argument("--real", type=Path, default=None, help="folder of your series, one sub-folder per class")
    p.add_argument("--real-repeat", type=int, default=d.real_repeat)
    a = p.parse_args(argv)
    cfg = TrainConfig(per_class=a.per_class, val_per_class=a.val_per_class, epochs=a.epochs, width=a.width,
                      lr=a.lr, threads=a.threads, workers=a.workers,
                      real=str(a.real) if a.real else None, real_repeat=a.real_repeat)
    train(cfg, a.out, a.run_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
