"""Train Pix2Pix for DCE phase-1 synthesis (seed 000): GAN + λ·L1 with λ = 100, Adam
lr 2e-4, β1 0.5, per-slice min-max scaling to [-1, 1], augmentation by rotation, cropping
and mirroring. Data: phantom subjects (by seed split) or paired .npz files from
`models.dce.pairs` (a hospital's own studies).

    python -m models.dce.train --config small --out runs/dce_small
    python -m models.dce.train --config full --data pairs/ --out runs/dce_full   # GPU
    python -m models.dce.train --resume runs/dce_small/latest.pt

Checkpoints hold weights, optimiser states, the step and every option, so a run can be
resumed or exported without remembering how it was started.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from dicom_synth.intensity import normalise_slices
from models.common import trainer
from models.common.config import RunConfig
from models.common.layers import init_weights
from models.common.trainer import device_of
from models.dce.networks import NetConfig, PatchDiscriminator, UnetGenerator
from models.dce.phantom import generate_subject, split_seeds

METRIC = "val_l1"  # mean L1 on whole validation slices in eval mode


@dataclass(frozen=True)
class TrainConfig(RunConfig):
    """Every option of a run (`RunConfig`'s and the DCE family's); saved in each checkpoint and
    in the model card."""

    net: NetConfig = field(default_factory=NetConfig)
    n_train: int = 16  # phantom subjects
    slices_per_subject: int = 16
    slice_spacing_mm: float = 3.0  # spread training slices through the breast
    size: int = 384
    crop: int = 256
    # Crop curriculum: (fraction of steps, crop side) from that point on. Small crops are
    # cheap steps early; the last steps see whole slices, as exported and run.
    crop_schedule: tuple[tuple[float, int], ...] = ()
    batch_size: int = 4
    steps: int = 500
    lambda_l1: float = 100.0
    gan_weight: float = 1.0  # 0 = L1 only (an ablation; pix2pix uses 1)
    rotate_deg: float = 10.0
    scale_range: tuple[float, float] = (0.9, 1.1)
    focus_prob: float = 0.0  # share of crops centred on small bright target structures
    focus_threshold: float = 0.3  # top-hat height in [-1, 1] units
    lr_decay_from: float = 1.0  # pix2pix "linear" policy: lr falls to 0 from this fraction
    val_every: int = 100

    def sides(self) -> dict[str, int]:
        return {**super().sides(), **{f"scheduled crop {c}": c for _, c in self.crop_schedule}}

    def crop_at(self, step: int) -> int:
        """The training crop side at a step."""
        if self.crop_schedule:
            side = self.crop_schedule[0][1]
            for frac, c in self.crop_schedule:
                if step >= frac * self.steps:
                    side = c
            return side
        return self.size if step >= self.full_size_from * self.steps else self.crop

    def lr_at(self, step: int) -> float:
        start = self.lr_decay_from * self.steps
        if step < start:
            return self.lr
        return self.lr * max(0.0, 1.0 - (step - start) / max(1.0, self.steps - start))


CONFIGS: dict[str, TrainConfig] = {
    # Seed 000 as far as it says: Pix2Pix (U-Net + PatchGAN, lambda 100, Adam lr 2e-4, beta1 0.5)
    # at the native 384x384, per-slice min-max to [-1, 1], rotation, cropping and mirroring, on
    # ~3000 pairs (38 patients x 80 slices here). Widths, batch 1 and the 100 + 100 epochs with
    # linear decay are pix2pix's defaults (the seed does not give them).
    "seed": TrainConfig(name="seed", net=NetConfig(ngf=64, ndf=64), n_train=38, n_val=8, slices_per_subject=80,
                        slice_spacing_mm=1.0, crop=256, batch_size=1, steps=200 * 38 * 80, lr_decay_from=0.5,
                        val_every=5000, threads=8, device="cuda"),
    # A GPU: the paper's widths, full-size slices, many subjects.
    "full": TrainConfig(name="full", net=NetConfig(ngf=64, ndf=64), n_train=200, n_val=20,
                        slices_per_subject=48, slice_spacing_mm=2.0, crop=256, batch_size=8,
                        steps=60000, val_every=1000, threads=8, device="cuda",
                        lr_decay_from=0.5, full_size_from=0.8, focus_prob=0.3),
    # 2 CPU cores: a narrow U-Net, a crop curriculum, crops centred on small bright structures;
    # built the committed weights (3500 steps, ~30 min on one shared core; 1400 steps left thin
    # breast vessels dark). Was called "demo".
    "small": TrainConfig(name="small", net=NetConfig(ngf=16, ndf=16), n_train=20, steps=3500,
                         batch_size=4, crop_schedule=((0.0, 128), (0.6, 256), (0.9, 384)),
                         lr_decay_from=0.7, val_every=200, focus_prob=0.7),
    # Seconds, for tests.
    "tiny": TrainConfig(name="tiny", net=NetConfig(ngf=4, ndf=4, num_downs=5), n_train=2, n_val=1,
                        slices_per_subject=2, size=64, crop=64, batch_size=2, steps=4,
                        val_every=2, full_size_from=0.5),
}


def phantom_pairs(seeds: list[int], cfg: TrainConfig, desc: str = "phantom") -> tuple[np.ndarray, np.ndarray]:
    """(source, target) float32 (N, H, W) in [-1, 1], per-slice min-max scaled."""
    xs, ys = [], []
    for s in tqdm(seeds, desc=desc, leave=False):
        subj = generate_subject(s, n_slices=cfg.slices_per_subject, size=cfg.size,
                                slice_spacing_mm=cfg.slice_spacing_mm)
        xs.append(normalise_slices(subj.t1))
        ys.append(normalise_slices(subj.dce1))
    return np.concatenate(xs), np.concatenate(ys)


def npz_pairs(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """Pairs written by `models.dce.pairs` (source/target in source units), normalised here."""
    xs, ys = [], []
    for p in sorted(Path(folder).glob("*.npz")):
        with np.load(p) as z:
            xs.append(normalise_slices(z["source"]))
            ys.append(normalise_slices(z["target"]))
    if not xs:
        raise FileNotFoundError(f"no .npz pairs in {folder}")
    return np.concatenate(xs), np.concatenate(ys)


def augment(x: torch.Tensor, y: torch.Tensor, out: int, cfg: TrainConfig,
            gen: torch.Generator, centres: torch.Tensor | None = None
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """The same random rotation, scaling, crop and mirror for input and target, in one
    bilinear resampling; outside the image is background (-1). `centres` (B, 2) gives crop
    centres in normalised (x, y) coordinates; NaN rows get a uniformly random crop."""
    b, _, h, w = x.shape
    ang = (torch.rand(b, generator=gen) * 2 - 1) * math.radians(cfg.rotate_deg)
    lo, hi = cfg.scale_range
    zoom = lo + torch.rand(b, generator=gen) * (hi - lo)
    frac_h, frac_w = out / h, out / w
    flip = torch.where(torch.rand(b, generator=gen) < 0.5, -1.0, 1.0) if cfg.mirror else torch.ones(b)
    cos, sin = torch.cos(ang) / zoom, torch.sin(ang) / zoom
    tx = (torch.rand(b, generator=gen) * 2 - 1) * max(0.0, 1 - frac_w)
    ty = (torch.rand(b, generator=gen) * 2 - 1) * max(0.0, 1 - frac_h)
    if centres is not None:
        use = ~torch.isnan(centres[:, 0])
        tx = torch.where(use, centres[:, 0].nan_to_num().clamp(-1 + frac_w, 1 - frac_w), tx)
        ty = torch.where(use, centres[:, 1].nan_to_num().clamp(-1 + frac_h, 1 - frac_h), ty)
    theta = torch.stack([torch.stack([cos * frac_w * flip, -sin * frac_h, tx], 1),
                         torch.stack([sin * frac_w * flip, cos * frac_h, ty], 1)], 1)
    grid = F.affine_grid(theta, [b, 2, out, out], align_corners=False)
    both = torch.cat([x, y], 1) + 1.0  # zero padding == background after the shift
    res = F.grid_sample(both, grid, mode="bilinear", padding_mode="zeros", align_corners=False) - 1.0
    return res[:, :1].contiguous(), res[:, 1:].contiguous()


def focus_points(ys: np.ndarray, threshold: float, xs: np.ndarray | None = None,
                 per_slice: int = 256, seed: int = 0, sigma: float = 2.0,
                 skin_px: int = 6) -> list[np.ndarray]:
    """Per target slice, up to `per_slice` (x, y) normalised points on small bright
    structures (vessels, lesions): target minus its local mean above a threshold (a white
    top-hat), and, given the inputs, at least `skin_px` inside the body (enhancing skin
    is easy). Crops centred there teach the rare, small, clinically relevant enhancement
    that uniform crops mostly miss."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    out = []
    for k, y in enumerate(ys):
        tophat = y - ndimage.gaussian_filter(y, sigma)
        keep = tophat > threshold
        if xs is not None:
            body = ndimage.binary_fill_holes(ndimage.gaussian_filter(xs[k], 1.5) > -0.8)
            keep &= ndimage.binary_erosion(body, iterations=skin_px)
        rr, cc = np.nonzero(keep)
        if len(rr) > per_slice:
            pick = rng.choice(len(rr), per_slice, replace=False)
            rr, cc = rr[pick], cc[pick]
        h, w = y.shape
        out.append(np.stack([(2 * cc + 1) / w - 1, (2 * rr + 1) / h - 1], 1).astype(np.float32))
    return out


class Pix2Pix(trainer.GanModel):
    """Generator, discriminator, their optimisers and one training step."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.device = device_of(cfg.device)
        self.G = UnetGenerator(cfg.net).to(self.device)
        self.D = PatchDiscriminator(cfg.net).to(self.device)
        init_weights(self.G)
        init_weights(self.D)
        betas = (cfg.beta1, 0.999)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=cfg.lr, betas=betas)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=cfg.lr, betas=betas)
        self.step = 0

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        fake = self.G(x)
        # Discriminator: real pairs -> 1, synthetic pairs -> 0 (vanilla GAN, as pix2pix).
        pred_real = self.D(x, y)
        pred_fake = self.D(x, fake.detach())
        loss_d = 0.5 * (F.binary_cross_entropy_with_logits(pred_real, torch.ones_like(pred_real))
                        + F.binary_cross_entropy_with_logits(pred_fake, torch.zeros_like(pred_fake)))
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        self.opt_d.step()
        # Generator: fool D, stay close to the target (λ = 100).
        pred = self.D(x, fake)
        loss_gan = F.binary_cross_entropy_with_logits(pred, torch.ones_like(pred))
        loss_l1 = F.l1_loss(fake, y)
        loss_g = self.cfg.gan_weight * loss_gan + self.cfg.lambda_l1 * loss_l1
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_g.step()
        self.step += 1
        return {"d": loss_d.item(), "g_gan": loss_gan.item(), "l1": loss_l1.item()}

    @torch.no_grad()
    def validate(self, xs: np.ndarray, ys: np.ndarray, batch: int = 4) -> float:
        """Mean L1 on whole slices in eval mode, the mode that is exported."""
        self.G.eval()
        total, n = 0.0, 0
        for i in range(0, len(xs), batch):
            x = torch.from_numpy(xs[i:i + batch, None]).to(self.device)
            y = torch.from_numpy(ys[i:i + batch, None]).to(self.device)
            total += F.l1_loss(self.G(x), y, reduction="sum").item()
            n += y.numel()
        self.G.train()
        return total / max(n, 1)

    @property
    def nets(self) -> dict[str, torch.nn.Module]:
        return {"G": self.G, "D": self.D}


def load_generator(ckpt_path: Path) -> tuple[UnetGenerator, TrainConfig, dict]:
    """The generator of a checkpoint in eval mode, with the run's options."""
    return trainer.load_network(ckpt_path, TrainConfig.from_dict, UnetGenerator, "G")


def train(cfg: TrainConfig, out_dir: Path, data: Path | None = None,
          resume: Path | None = None, progress: bool = True) -> dict:
    """Run (or resume) training; writes latest.pt, best.pt and history.json in out_dir."""
    out_dir = trainer.prepare(cfg, out_dir)
    t0 = time.time()
    if data is not None:
        xs, ys = npz_pairs(data)
        n_val = max(1, len(xs) // 10)  # real data: caller should split by patient in folders
        vx, vy = xs[-n_val:], ys[-n_val:]
        xs, ys = xs[:-n_val], ys[:-n_val]
    else:
        xs, ys = phantom_pairs(split_seeds("train", cfg.n_train), cfg, "train subjects")
        val_cfg = dataclasses.replace(cfg, slices_per_subject=max(4, cfg.slices_per_subject // 2))
        vx, vy = phantom_pairs(split_seeds("val", cfg.n_val), val_cfg, "val subjects")
    return fit_pairs(cfg, out_dir, (xs, ys), (vx, vy), resume, progress, data_seconds=time.time() - t0)


def fit_pairs(cfg: TrainConfig, out_dir: Path, train_pairs: tuple[np.ndarray, np.ndarray],
              val_pairs: tuple[np.ndarray, np.ndarray], resume: Path | None = None, progress: bool = True,
              data_seconds: float = 0.0) -> dict:
    """Train on (source, target) slices in [-1, 1], (N, H, W) each; validate on val_pairs."""
    out_dir = trainer.prepare(cfg, out_dir)
    (xs, ys), (vx, vy) = train_pairs, val_pairs
    model = Pix2Pix(cfg)
    history: dict = {"steps": [], "data_seconds": round(data_seconds, 1), "n_pairs": int(len(xs))}
    history, best = trainer.resume_or_init(model, history, METRIC, resume)
    gen = torch.Generator().manual_seed(trainer.rank_seed(cfg.seed + model.step))
    rng = np.random.default_rng(trainer.rank_seed(cfg.seed + model.step))
    xt, yt = torch.from_numpy(xs[:, None]), torch.from_numpy(ys[:, None])
    focus = focus_points(ys, cfg.focus_threshold, xs, seed=cfg.seed) if cfg.focus_prob > 0 else []

    def step_once(step: int) -> dict[str, float]:
        idx = torch.from_numpy(rng.integers(0, len(xt), cfg.batch_size))
        for group in (*model.opt_g.param_groups, *model.opt_d.param_groups):
            group["lr"] = cfg.lr_at(step)
        centres = None
        if focus:
            centres = torch.full((len(idx), 2), float("nan"))
            for i, j in enumerate(idx.tolist()):
                pts = focus[j]
                if len(pts) and rng.random() < cfg.focus_prob:
                    centres[i] = torch.from_numpy(pts[rng.integers(len(pts))])
        x, y = augment(xt[idx], yt[idx], cfg.crop_at(step), cfg, gen, centres)
        return model.train_step(x.to(model.device), y.to(model.device))

    return trainer.fit(model, cfg, out_dir, history, best, train_step=step_once,
                       validate=lambda: model.validate(vx, vy), metric=METRIC,
                       postfix=lambda losses: {"l1": f"{losses['l1']:.4f}", "d": f"{losses['d']:.3f}"},
                       desc=f"pix2pix {cfg.name}", progress=progress)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Train Pix2Pix for DCE phase-1 synthesis.")
    trainer.add_train_arguments(p, CONFIGS, "runs/dce")
    p.add_argument("--data", type=Path, default=None, help="folder of .npz pairs (real data)")
    a = p.parse_args(argv)
    cfg = trainer.config_from_args(a, CONFIGS, TrainConfig.from_dict)
    trainer.print_summary(train(cfg, a.out, data=a.data, resume=a.resume, progress=not a.no_progress))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
