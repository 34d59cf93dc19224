"""Train the seed-004 CycleGAN, CT -> pseudo-MRI, on *unpaired* slices: the CT and the MRI
come from different phantom subjects (even / odd train seeds), shuffled independently, as
the seed's 52 CT + 52 MRI patients were. Validation uses the phantom's registered truth,
which real data would not have.

Losses (seed 004): LSGAN for both domains, the denoising discriminator on the MRI side
(real MRI vs real MRI + Gaussian noise and vs the generator's output), L1 for cycle and
identity. Adam lr 2e-4, β1 0.5, linear decay over the second half (pytorch-CycleGAN), an
image pool of past fakes for the discriminators.

    python -m models.ct.train --config small --out runs/ct_small          # 2 CPU cores
    python -m models.ct.train --config full --out runs/ct_full            # a GPU
    python -m models.ct.train --resume runs/ct_small/latest.pt --steps 3000
    python -m models.ct.build_demo            # the demo's whole recipe (models/ct/recipe.py)

Checkpoints hold every network, optimiser state, the step, the options and the history.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from dicom_synth.intensity import normalise_slices
from dicom_synth.multicontrast import HU_CURVE, HU_WINDOW, normalise
from models.chain import carried_times
from models.common import trainer
from models.common.config import RunConfig
from models.common.layers import init_weights
from models.ct.networks import CycleNetConfig, PatchDiscriminator, ResnetGenerator, with_long_skip
from models.ct.phantom import REGIONS, generate_subject, split_seeds
from models.ct.structure_loss import ngf_loss, total_variation

# (HU, input value): air -1, fat -0.7, water -0.31, soft tissue 0..100 HU over -0.3..0.6,
# marrow ~0.75, cortical bone ~0.93.
SOFT_TISSUE_CURVE: tuple[tuple[float, float], ...] = (
    (-1000.0, -1.0), (-200.0, -0.85), (-100.0, -0.7), (-10.0, -0.4), (100.0, 0.6), (300.0, 0.8), (1500.0, 1.0))

METRIC = "val_mae"  # CT -> MRI mean absolute error inside the body on the validation pairs


@dataclass(frozen=True)
class TrainConfig(RunConfig):
    """Every option of a run (`RunConfig`'s, whose matrix of 128 is ~3 mm (abdomen) / ~1.9 mm
    (head-neck) pixels, and the CT family's); saved in each checkpoint and in the model card."""

    # options tried and removed (models/EXPERIMENTS.md), with the value that had them off: a
    # saved config that holds that value still loads
    RETIRED: ClassVar[dict] = {"lambda_edge": 0.0}

    net: CycleNetConfig = field(default_factory=lambda: CycleNetConfig(ngf=12, ndf=16))
    regions: tuple[str, ...] = REGIONS
    n_train: int = 8  # subjects per region *per modality* (CT and MRI from different ones)
    n_val: int = 1  # subjects per region, with registered truth
    slices_per_subject: int = 24
    lr_d_mult: float = 2.0  # discriminators learn faster than generators (TTUR, Heusel et al.)
    decay_from: float = 0.5  # lr decays linearly to 0 from this fraction of the steps
    lambda_cycle: float = 10.0
    lambda_identity: float = 0.1  # times lambda_cycle; pytorch-CycleGAN's 0.5 holds G near the identity
    lambda_denoise: float = 1.0
    denoise_sigma: float = 0.1  # Gaussian noise added to real MRI ([-1, 1] units)
    lambda_ngf: float = 0.0  # CT edges must reappear in either sign (normalised gradient fields)
    lambda_tv: float = 0.0  # total variation of the pseudo-MRI: flat tissue stays flat (no invented texture)
    pool_size: int = 50
    hu_window: tuple[float, float] = (-300.0, 300.0)  # fat..marrow spread over [-1, 1]; air and bone clip
    # Instead of the window, a piecewise-linear curve ((HU, value) knots), when given.
    hu_curve: tuple[tuple[float, float], ...] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        bad = set(self.regions) - set(REGIONS)
        if bad:
            raise ValueError(f"unknown regions {sorted(bad)}")

    def normalisation(self) -> dict:
        """The card's input normalisation (what `ct_input` applies)."""
        if self.hu_curve is not None:
            return {"kind": HU_CURVE, "knots_hu": [k for k, _ in self.hu_curve],
                    "values": [v for _, v in self.hu_curve], "range": [-1.0, 1.0]}
        return {"kind": HU_WINDOW, "window_hu": list(self.hu_window), "range": [-1.0, 1.0]}

    def ct_input(self, hu: np.ndarray) -> np.ndarray:
        """CT in HU -> the generator's input, as the service will compute it."""
        return normalise(hu, self.normalisation())

_SEED_SCALE = {"n_train": 50, "n_val": 5, "slices_per_subject": 48, "size": 256, "crop": 256, "batch_size": 1,
               "steps": 200_000, "val_every": 5000, "threads": 8, "device": "cuda"}

CONFIGS: dict[str, TrainConfig] = {
    # Seed 004 as far as it says: CycleGAN with 2 residual blocks and one transposed up-step
    # (`CycleNetConfig` defaults), PatchGAN plus the denoising discriminator, L1 cycle loss, on
    # unpaired CT and MRI (its 52 + 52 abdomen patients: 50 + 50 subjects per region here),
    # whole 256x256 slices; widths, steps and the identity weight are pytorch-CycleGAN's.
    "seed": TrainConfig(name="seed", net=CycleNetConfig(ngf=64, ndf=64), **_SEED_SCALE),
    # A GPU: the seed's scale with `small`'s input curve and no identity term; the recipe's
    # warm restarts and fine-tuning stages (models/ct/recipe.py) may follow.
    "full": TrainConfig(name="full", net=CycleNetConfig(ngf=64, ndf=64), lambda_identity=0.0,
                        hu_curve=SOFT_TISSUE_CURVE, **_SEED_SCALE),
    # 2 CPU cores: narrow networks, 64-pixel crops of 128-pixel slices, no identity term (it
    # holds G near the identity, and fat must turn bright) and a soft-tissue HU curve instead of
    # the linear window; the first run of the demo recipe (was small_curve).
    "small": TrainConfig(name="small", lambda_identity=0.0, hu_curve=SOFT_TISSUE_CURVE),
    # Seconds, for tests.
    "tiny": TrainConfig(name="tiny", net=CycleNetConfig(ngf=4, ndf=4, d_layers=2, dn_layers=1),
                        n_train=1, n_val=1, slices_per_subject=2, size=64, crop=32, batch_size=2,
                        steps=3, val_every=2, pool_size=2),
}


@dataclass
class Domains:
    """Unpaired training slices and registered validation pairs, all in [-1, 1]."""

    ct: np.ndarray  # (N, H, W) windowed CT
    mr: np.ndarray  # (M, H, W) per-slice min-max MRI (other subjects)
    val_ct: np.ndarray
    val_mr: np.ndarray
    val_body: np.ndarray  # bool, body of the validation CT
    subjects: dict = field(default_factory=dict)


def build_domains(cfg: TrainConfig, progress: bool = True) -> Domains:
    """CT from even train seeds, MRI from odd ones: no subject is seen in both domains."""
    cts, mrs, vct, vmr, vbody = [], [], [], [], []
    used: dict[str, list[int]] = {"ct": [], "mr": [], "val": []}
    jobs = []
    for region in cfg.regions:
        seeds = split_seeds("train", 2 * cfg.n_train)
        jobs += [("ct", region, s) for s in seeds[0::2]] + [("mr", region, s) for s in seeds[1::2]]
        jobs += [("val", region, s) for s in split_seeds("val", cfg.n_val)]
    for kind, region, seed in tqdm(jobs, desc="phantom subjects", disable=not progress, leave=False):
        s = generate_subject(seed, region, n_slices=cfg.slices_per_subject, size=cfg.size)
        used[kind].append(seed)
        if kind == "ct":
            cts.append(cfg.ct_input(s.ct))
        elif kind == "mr":
            mrs.append(normalise_slices(s.mr))
        else:
            vct.append(cfg.ct_input(s.ct))
            vmr.append(normalise_slices(s.mr))
            vbody.append(s.ct > -500)
    return Domains(np.concatenate(cts), np.concatenate(mrs), np.concatenate(vct), np.concatenate(vmr),
                   np.concatenate(vbody), used)


class ImagePool:
    """Shrivastava et al.'s history of generated images: half of each batch the
    discriminator sees comes from earlier generators (pytorch-CycleGAN's ImagePool)."""

    def __init__(self, size: int, rng: random.Random):
        self.size, self.rng, self.images = size, rng, []

    def query(self, batch: torch.Tensor) -> torch.Tensor:
        if self.size <= 0:
            return batch
        if self.images and self.images[0].shape[-2:] != batch.shape[-2:]:
            self.images = []  # crops -> whole slices: start a new history
        out = []
        for img in batch.detach():
            img = img[None]
            if len(self.images) < self.size:
                self.images.append(img)
                out.append(img)
            elif self.rng.random() < 0.5:
                i = self.rng.randrange(self.size)
                out.append(self.images[i])
                self.images[i] = img
            else:
                out.append(img)
        return torch.cat(out, 0)


def random_crops(pool: np.ndarray, n: int, crop: int, rng: np.random.Generator, mirror: bool,
                 min_body: float = 0.25) -> torch.Tensor:
    """n random crops (mostly inside the body: background is -1 in both domains)."""
    out = np.empty((n, 1, crop, crop), np.float32)
    h, w = pool.shape[1:]
    for i in range(n):
        for _ in range(6):
            k = int(rng.integers(len(pool)))
            y, x = int(rng.integers(0, h - crop + 1)), int(rng.integers(0, w - crop + 1))
            patch = pool[k, y:y + crop, x:x + crop]
            if (patch > -0.8).mean() >= min_body:
                break
        out[i, 0] = patch[:, ::-1] if mirror and rng.random() < 0.5 else patch
    return torch.from_numpy(out)


def _lsgan(pred: torch.Tensor, real: bool) -> torch.Tensor:
    return F.mse_loss(pred, torch.full_like(pred, 1.0 if real else 0.0))


class CycleGAN(trainer.GanModel):
    """Both generators, the three discriminators, their optimisers and one training step."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.device = trainer.device_of(cfg.device)
        n = cfg.net
        self.G = ResnetGenerator(n).to(self.device)  # CT -> MRI (the exported one)
        self.F = ResnetGenerator(n).to(self.device)  # MRI -> CT
        self.D_mr = PatchDiscriminator(n.ndf, n.d_layers).to(self.device)
        self.D_ct = PatchDiscriminator(n.ndf, n.d_layers).to(self.device)
        self.D_n = PatchDiscriminator(n.ndf, n.dn_layers).to(self.device)  # denoising D
        for net in self.nets.values():
            init_weights(net)
        betas = (cfg.beta1, 0.999)
        self.opt_g = torch.optim.Adam([*self.G.parameters(), *self.F.parameters()], lr=cfg.lr, betas=betas)
        self.opt_d = torch.optim.Adam([*self.D_mr.parameters(), *self.D_ct.parameters(),
                                       *self.D_n.parameters()], lr=cfg.lr * cfg.lr_d_mult, betas=betas)
        rng = random.Random(cfg.seed)
        self.pool_mr, self.pool_ct = ImagePool(cfg.pool_size, rng), ImagePool(cfg.pool_size, rng)
        self.step = 0

    @property
    def nets(self) -> dict[str, torch.nn.Module]:
        return {"G": self.G, "F": self.F, "D_mr": self.D_mr, "D_ct": self.D_ct, "D_n": self.D_n}

    def _set_lr(self) -> float:
        c = self.cfg
        start = int(c.decay_from * c.steps)
        frac = 1.0 if self.step < start else max(0.0, 1.0 - (self.step - start) / max(1, c.steps - start))
        for opt, mult in ((self.opt_g, 1.0), (self.opt_d, c.lr_d_mult)):
            for g in opt.param_groups:
                g["lr"] = c.lr * mult * frac
        return c.lr * frac

    def train_step(self, ct: torch.Tensor, mr: torch.Tensor, gen: torch.Generator) -> dict[str, float]:
        c = self.cfg
        self._set_lr()
        fake_mr = self.G(ct)
        rec_ct = self.F(fake_mr)
        fake_ct = self.F(mr)
        rec_mr = self.G(fake_ct)
        for d in (self.D_mr, self.D_ct, self.D_n):
            d.requires_grad_(False)
        loss_gan = _lsgan(self.D_mr(fake_mr), True) + _lsgan(self.D_ct(fake_ct), True)
        loss_dn = _lsgan(self.D_n(fake_mr), True)
        loss_cyc = F.l1_loss(rec_ct, ct) + F.l1_loss(rec_mr, mr)
        loss_g = loss_gan + c.lambda_denoise * loss_dn + c.lambda_cycle * loss_cyc
        loss_ngf = torch.zeros(())
        if c.lambda_ngf > 0:
            loss_ngf = ngf_loss(ct, fake_mr)
            loss_g = loss_g + c.lambda_ngf * loss_ngf
        loss_tv = torch.zeros(())
        if c.lambda_tv > 0:
            loss_tv = total_variation(fake_mr)
            loss_g = loss_g + c.lambda_tv * loss_tv
        loss_id = torch.zeros(())
        if c.lambda_identity > 0:
            loss_id = F.l1_loss(self.G(mr), mr) + F.l1_loss(self.F(ct), ct)
            loss_g = loss_g + c.lambda_cycle * c.lambda_identity * loss_id
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_g.step()
        for d in (self.D_mr, self.D_ct, self.D_n):
            d.requires_grad_(True)
        past_mr = self.pool_mr.query(fake_mr)
        past_ct = self.pool_ct.query(fake_ct)
        noisy = mr + c.denoise_sigma * torch.randn(mr.shape, generator=gen).to(mr.device)
        loss_d_mr = 0.5 * (_lsgan(self.D_mr(mr), True) + _lsgan(self.D_mr(past_mr), False))
        loss_d_ct = 0.5 * (_lsgan(self.D_ct(ct), True) + _lsgan(self.D_ct(past_ct), False))
        loss_d_n = 0.5 * (_lsgan(self.D_n(mr), True) + 0.5 * (
            _lsgan(self.D_n(noisy), False) + _lsgan(self.D_n(fake_mr.detach()), False)))
        self.opt_d.zero_grad(set_to_none=True)
        (loss_d_mr + loss_d_ct + loss_d_n).backward()
        self.opt_d.step()
        self.step += 1
        return {"g_gan": loss_gan.item(), "g_dn": loss_dn.item(), "cycle": loss_cyc.item(), "ngf": loss_ngf.item(),
                "tv": loss_tv.item(), "identity": loss_id.item(), "d_mr": loss_d_mr.item(), "d_ct": loss_d_ct.item(),
                "d_n": loss_d_n.item()}

    @torch.no_grad()
    def validate(self, ct: np.ndarray, mr: np.ndarray, body: np.ndarray, batch: int = 4) -> float:
        """MAE on [0, 1] inside the body against the registered truth (whole slices)."""
        total, n = 0.0, 0
        for i in range(0, len(ct), batch):
            x = torch.from_numpy(ct[i:i + batch, None]).to(self.device)
            pred = self.G(x).cpu().numpy()[:, 0]
            m = body[i:i + batch]
            total += float(np.abs(pred - mr[i:i + batch])[m].sum()) / 2.0
            n += int(m.sum())
        return total / max(n, 1)


def load_generator(ckpt_path: Path) -> tuple[ResnetGenerator, TrainConfig, dict]:
    """The CT -> MRI generator of a checkpoint in eval mode, with the run's options."""
    return trainer.load_network(ckpt_path, TrainConfig.from_dict, ResnetGenerator, "G")


def init_from_checkpoint(model: CycleGAN, path: Path) -> dict:
    """Another run's weights (step 0, fresh optimisers). A plain generator may be loaded into
    one with `long_skip` (`with_long_skip`: same function to start with)."""
    ckpt = trainer.load_checkpoint(path)
    src = TrainConfig.from_dict(ckpt["config"]).net
    dst = model.cfg.net
    if dataclasses.replace(src, long_skip=dst.long_skip) != dst or (src.long_skip and not dst.long_skip):
        raise ValueError(f"{path} does not fit this network: {src} -> {dst}")
    for name, net in model.nets.items():
        state = ckpt[name]
        if name in ("G", "F") and dst.long_skip and not src.long_skip:
            state = with_long_skip(state, src)
        net.load_state_dict(state)
    return {"checkpoint": str(path), "step": int(ckpt["step"]), "config": ckpt["config"]["name"],
            "long_skip_added": bool(dst.long_skip and not src.long_skip), **carried_times(ckpt.get("history", {}))}


def train(cfg: TrainConfig, out_dir: Path, resume: Path | None = None, progress: bool = True,
          domains: Domains | None = None, init_from: Path | None = None) -> dict:
    """Run (or resume) training; writes latest.pt, best.pt, history.json, config.json.
    `init_from`: start from another run's weights instead (`init_from_checkpoint`)."""
    out_dir = trainer.prepare(cfg, out_dir)
    t0 = time.time()
    data = trainer.rank_share(domains or build_domains(cfg, progress), "ct", "mr")
    model = CycleGAN(cfg)
    history: dict = {"steps": [], "data_seconds": round(time.time() - t0, 1), "n_ct_slices": int(len(data.ct)),
                     "n_mr_slices": int(len(data.mr)), "subjects": data.subjects}
    history, best = trainer.resume_or_init(model, history, METRIC, resume, init_from, init_from_checkpoint)
    rng = np.random.default_rng(trainer.rank_seed([cfg.seed, model.step]))
    gen = torch.Generator().manual_seed(trainer.rank_seed(cfg.seed + model.step))

    def step_once(step: int) -> dict[str, float]:
        size = cfg.size if step >= cfg.full_size_from * cfg.steps else cfg.crop
        ct = random_crops(data.ct, cfg.batch_size, size, rng, cfg.mirror).to(model.device)
        mr = random_crops(data.mr, cfg.batch_size, size, rng, cfg.mirror).to(model.device)
        return model.train_step(ct, mr, gen)

    return trainer.fit(model, cfg, out_dir, history, best, train_step=step_once,
                       validate=lambda: model.validate(data.val_ct, data.val_mr, data.val_body), metric=METRIC,
                       postfix=lambda losses: {"cyc": f"{losses['cycle']:.3f}", "g": f"{losses['g_gan']:.2f}",
                                               "d": f"{losses['d_mr']:.2f}"},
                       desc=f"cyclegan {cfg.name}", progress=progress)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Train the seed-004 CycleGAN (CT -> pseudo-MRI).")
    trainer.add_train_arguments(p, CONFIGS, "runs/ct", "a small run's latest.pt")
    p.add_argument("--lambda-identity", type=float, default=None)
    p.add_argument("--lambda-ngf", type=float, default=None)
    p.add_argument("--lambda-tv", type=float, default=None)
    a = p.parse_args(argv)
    cfg = trainer.config_from_args(a, CONFIGS, TrainConfig.from_dict, lambda_identity=a.lambda_identity,
                                   lambda_ngf=a.lambda_ngf, lambda_tv=a.lambda_tv)
    trainer.print_summary(train(cfg, a.out, resume=a.resume, progress=not a.no_progress, init_from=a.init_from))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
