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

Checkpoints hold every network, optimiser state, the step, the options and the history.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from dicom_synth.intensity import normalise_slices
from dicom_synth.multicontrast import HU_CURVE, HU_WINDOW, normalise
from models.chain import carried_times
from models.common import trainer
from models.common.layers import init_weights
from models.common.structure import structure_map_soft, structure_map_torch
from models.ct.networks import (
    CycleNetConfig,
    PatchDiscriminator,
    ResnetGenerator,
    with_input_basis,
    with_long_skip,
)
from models.ct.phantom import REGIONS, generate_subject, split_seeds
from models.ct.structure_loss import ngf_loss, total_variation

# (HU, input value): air -1, fat -0.7, water -0.31, soft tissue 0..100 HU over -0.3..0.6,
# marrow ~0.75, cortical bone ~0.93.
SOFT_TISSUE_CURVE: tuple[tuple[float, float], ...] = (
    (-1000.0, -1.0), (-200.0, -0.85), (-100.0, -0.7), (-10.0, -0.4), (100.0, 0.6), (300.0, 0.8), (1500.0, 1.0))

# Centres of the generator's soft bins (`CycleNetConfig.input_basis`), in HU: fat, the fat /
# water mixtures, then every 10 HU across water and soft tissue, thyroid, marrow.
SOFT_BIN_HU: tuple[float, ...] = (-100.0, -60.0, -20.0, 0.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 80.0, 100.0, 250.0)


def curve_values(hu: tuple[float, ...], curve: tuple[tuple[float, float], ...] = SOFT_TISSUE_CURVE
                 ) -> tuple[float, ...]:
    """HU -> the generator's input value under a piecewise-linear curve."""
    knots, values = zip(*curve, strict=True)
    return tuple(round(float(v), 4) for v in np.interp(hu, knots, values))

METRIC = "val_mae"  # CT -> MRI mean absolute error inside the body on the validation pairs


@dataclass(frozen=True)
class TrainConfig:
    """Every option of a run; saved in each checkpoint and in the model card."""

    name: str = "small"
    net: CycleNetConfig = field(default_factory=lambda: CycleNetConfig(ngf=12, ndf=16))
    regions: tuple[str, ...] = REGIONS
    n_train: int = 8  # subjects per region *per modality* (CT and MRI from different ones)
    n_val: int = 1  # subjects per region, with registered truth
    slices_per_subject: int = 24
    size: int = 128  # phantom matrix: ~3 mm (abdomen) / ~1.9 mm (head-neck) pixels
    crop: int = 64
    batch_size: int = 2
    steps: int = 3000
    lr: float = 2e-4
    lr_d_mult: float = 2.0  # discriminators learn faster than generators (TTUR, Heusel et al.)
    beta1: float = 0.5
    decay_from: float = 0.5  # lr decays linearly to 0 from this fraction of the steps
    full_size_from: float = 0.8  # last 20 % of steps on whole slices (instance-norm statistics as exported)
    lambda_cycle: float = 10.0
    lambda_identity: float = 0.1  # times lambda_cycle; pytorch-CycleGAN's 0.5 holds G near the identity
    lambda_denoise: float = 1.0
    denoise_sigma: float = 0.1  # Gaussian noise added to real MRI ([-1, 1] units)
    lambda_edge: float = 0.0  # CT edges (seed 002's Algorithm 1) must reappear in the pseudo-MRI
    lambda_ngf: float = 0.0  # CT edges must reappear in either sign (normalised gradient fields)
    lambda_tv: float = 0.0  # total variation of the pseudo-MRI: flat tissue stays flat (no invented texture)
    pool_size: int = 50
    hu_window: tuple[float, float] = (-300.0, 300.0)  # fat..marrow spread over [-1, 1]; air and bone clip
    # Instead of the window, a piecewise-linear curve ((HU, value) knots), when given.
    hu_curve: tuple[tuple[float, float], ...] | None = None
    mirror: bool = True
    val_every: int = 250
    seed: int = 0
    threads: int = 2
    device: str = "cpu"

    def __post_init__(self) -> None:
        trainer.require_multiples(self.net.spatial_multiple, crop=self.crop, size=self.size)
        bad = set(self.regions) - set(REGIONS)
        if bad:
            raise ValueError(f"unknown regions {sorted(bad)}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def normalisation(self) -> dict:
        """The card's input normalisation (what `ct_input` applies)."""
        if self.hu_curve is not None:
            return {"kind": HU_CURVE, "knots_hu": [k for k, _ in self.hu_curve],
                    "values": [v for _, v in self.hu_curve], "range": [-1.0, 1.0]}
        return {"kind": HU_WINDOW, "window_hu": list(self.hu_window), "range": [-1.0, 1.0]}

    def ct_input(self, hu: np.ndarray) -> np.ndarray:
        """CT in HU -> the generator's input, as the service will compute it."""
        return normalise(hu, self.normalisation())

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        d = dict(d)
        d["net"] = CycleNetConfig(**d["net"])
        d["regions"] = tuple(d["regions"])
        d["hu_window"] = tuple(d["hu_window"])
        if d.get("hu_curve") is not None:
            d["hu_curve"] = tuple(tuple(k) for k in d["hu_curve"])
        return cls(**d)


_SKIP_NGF = TrainConfig(name="small_curve_skip_ngf", net=CycleNetConfig(ngf=12, ndf=16, long_skip=True),
                        lambda_identity=0.0, hu_curve=SOFT_TISSUE_CURVE, lambda_ngf=20.0, lambda_tv=5.0, lr=1e-4,
                        steps=1500)

CONFIGS: dict[str, TrainConfig] = {
    # 2 CPU cores, about 10 minutes: narrow networks, 64-pixel crops of 128-pixel slices.
    "small": TrainConfig(),
    # The same with an edge-recall term (not in the seed): boundaries the CT shows must
    # appear in the pseudo-MRI, against CycleGAN's habit of moving structure. Measured at 3000
    # steps: organ Dice 0.856 but body r -0.14 (liver bright: structure kept, mapping lost).
    "small_edge": TrainConfig(name="small_edge", lambda_edge=2.0),
    # The same width with the generators' full-resolution skip (`ResnetGenerator`, not in the
    # seed) and no identity term (it holds G near the identity, and fat must turn bright).
    # Measured at 3000 steps: organ Dice 0.861 but body r -0.18, as small_edge.
    "small_skip": TrainConfig(name="small_skip", net=CycleNetConfig(ngf=12, ndf=16, long_skip=True),
                              lambda_identity=0.0),
    # small without the identity term: it holds G near the identity, and fat must turn bright
    # (organ Dice 0.757 -> 0.827, body SSIM 0.295 -> 0.389 at 3000 steps).
    "small_noid": TrainConfig(name="small_noid", lambda_identity=0.0),
    # small_noid with a soft-tissue curve instead of the linear window: the demo config (3000
    # steps, warm restart to 6000: organ Dice 0.875, body SSIM 0.562; small_noid the same way
    # 0.849 / 0.535, and 0.862 / 0.549 with a second restart to 9000).
    "small_curve": TrainConfig(name="small_curve", lambda_identity=0.0, hu_curve=SOFT_TISSUE_CURVE),
    # Fine-tunes a small_curve(+NGF) run (--init-from) with the input blurred (sigma 1 px), in
    # case the pseudo-MRI's texture were the CT's noise carried through. It is not: a pilot
    # from the NGF run's step 7500 kept the texture (organ Dice 0.918 at 1500 of 3000 steps,
    # stopped there).
    "small_curve_blur_ngf": TrainConfig(name="small_curve_blur_ngf", net=CycleNetConfig(ngf=12, ndf=16, input_blur=1.0),
                                        lambda_identity=0.0, hu_curve=SOFT_TISSUE_CURVE, lambda_ngf=20.0,
                                        lr=1e-4),
    # Fine-tunes a small_curve(+NGF) run (--init-from) with a total-variation term: the
    # pseudo-MRI's flat tissue stays flat instead of the blotchy texture the GAN draws there.
    # A demo stage (after small_curve 3000 -> 6000 -> 9000:lambda_ngf=20): organ Dice
    # 0.922 -> 0.935 (lambda_tv 2: 0.933).
    "small_curve_tv_ngf": TrainConfig(name="small_curve_tv_ngf", lambda_identity=0.0, hu_curve=SOFT_TISSUE_CURVE,
                                      lambda_ngf=20.0, lambda_tv=5.0, lr=1e-4, steps=1500),
    # Fine-tunes a small_curve_tv_ngf run (--init-from) with a full-resolution skip added to the
    # learnt generator (`with_long_skip`: same function at the start), so the last layer sees
    # where the CT's edges are. A demo stage (v0.3.0's last): organ Dice 0.934 -> 0.938, body
    # SSIM 0.620 -> 0.625, unit SSIM 0.637 -> 0.689 (with the air void). An earlier pilot straight
    # from v0.2.0 (NGF 5, no TV) scored 0.917 at 1250 of 3000 steps.
    "small_curve_skip_ngf": _SKIP_NGF,
    # small_curve_skip_ngf again, on three times the training subjects (24 per region and
    # modality; the run that made v0.4.0 called it small_curve_skip_ngf_more): eyes and
    # parotids are a few slices per subject, and the GAN saw few of them.
    # Demo stages, this and the next two (organ Dice on 2 / 6 test subjects per region, body
    # SSIM on 2): after small_curve_skip_ngf 0.938 / 0.932, 0.625; this 0.942 / 0.936, 0.636;
    # 48 subjects 0.945 / 0.940, 0.654; 96 subjects 0.945 / 0.940, 0.661.
    "small_curve_skip_ngf_24": dataclasses.replace(_SKIP_NGF, name="small_curve_skip_ngf_24", n_train=24),
    # The same on 48 subjects per region and modality, to fine-tune a small_curve_skip_ngf_24 run.
    "small_curve_skip_ngf_48": dataclasses.replace(_SKIP_NGF, name="small_curve_skip_ngf_48", n_train=48, steps=3000),
    # And on 96, to fine-tune a small_curve_skip_ngf_48 run.
    "small_curve_skip_ngf_96": dataclasses.replace(_SKIP_NGF, name="small_curve_skip_ngf_96", n_train=96, steps=3000),
    # small_curve_skip_ngf_48 with soft bins of the input (`CycleNetConfig.input_basis`) added
    # to a learnt generator (zero weights: same function at the start), to fine-tune a
    # small_curve_skip_ngf_96 run: vitreous (10 HU) came out as grey as white matter (28 HU).
    # Measured after v0.4.0's last stage: organ Dice 0.943, body SSIM 0.667 (v0.4.0 0.945,
    # 0.661); vitreous still grey. Not adopted. Behind the CT-guided filter: 0.967 / 0.711, and
    # on 96 subjects (next) 0.968 / 0.713, the same as v0.4.0's generator (0.968 / 0.710).
    "small_curve_skip_ngf_bins": dataclasses.replace(
        _SKIP_NGF, name="small_curve_skip_ngf_bins", n_train=48, steps=3000,
        net=dataclasses.replace(_SKIP_NGF.net, input_basis=curve_values(SOFT_BIN_HU))),
    # The same on 96 subjects per region and modality.
    "small_curve_skip_ngf_bins_96": dataclasses.replace(
        _SKIP_NGF, name="small_curve_skip_ngf_bins_96", n_train=96, steps=3000,
        net=dataclasses.replace(_SKIP_NGF.net, input_basis=curve_values(SOFT_BIN_HU))),
    # A GPU: the usual CycleGAN widths, whole 256x256 slices, many subjects.
    "full": TrainConfig(name="full", net=CycleNetConfig(ngf=64, ndf=64), n_train=50, n_val=5,
                        slices_per_subject=48, size=256, crop=256, batch_size=1, steps=200_000,
                        val_every=5000, threads=8, device="cuda"),
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
        loss_edge = torch.zeros(())
        if c.lambda_edge > 0:  # recall only: MRI may show boundaries CT cannot
            edges = structure_map_torch(ct)
            loss_edge = (edges * (1 - structure_map_soft(fake_mr))).sum() / edges.sum().clamp(min=1.0)
            loss_g = loss_g + c.lambda_edge * loss_edge
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
        return {"g_gan": loss_gan.item(), "g_dn": loss_dn.item(), "cycle": loss_cyc.item(),
                "edge": loss_edge.item(), "ngf": loss_ngf.item(), "tv": loss_tv.item(), "identity": loss_id.item(),
                "d_mr": loss_d_mr.item(), "d_ct": loss_d_ct.item(), "d_n": loss_d_n.item()}

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
    src = CycleNetConfig(**ckpt["config"]["net"])
    dst = model.cfg.net
    adds_bins = bool(dst.input_basis) and not src.input_basis
    if (dataclasses.replace(src, long_skip=dst.long_skip, input_blur=dst.input_blur,
                            input_basis=dst.input_basis if adds_bins else src.input_basis,
                            input_basis_width=dst.input_basis_width if adds_bins else src.input_basis_width) != dst
            or (src.long_skip and not dst.long_skip)):
        raise ValueError(f"{path} does not fit this network: {src} -> {dst}")
    for name, net in model.nets.items():
        state = ckpt[name]
        if name in ("G", "F") and dst.long_skip and not src.long_skip:
            state = with_long_skip(state, src)
        if name in ("G", "F") and adds_bins:
            state = with_input_basis(state, dataclasses.replace(src, long_skip=dst.long_skip,
                                                                input_basis=dst.input_basis))
        net.load_state_dict(state)
    return {"checkpoint": str(path), "step": int(ckpt["step"]), "config": ckpt["config"]["name"],
            "long_skip_added": bool(dst.long_skip and not src.long_skip), "input_basis_added": adds_bins,
            **carried_times(ckpt.get("history", {}))}


def train(cfg: TrainConfig, out_dir: Path, resume: Path | None = None, progress: bool = True,
          domains: Domains | None = None, init_from: Path | None = None) -> dict:
    """Run (or resume) training; writes latest.pt, best.pt, history.json, config.json.
    `init_from`: start from another run's weights instead (`init_from_checkpoint`)."""
    out_dir = trainer.prepare(cfg, out_dir)
    t0 = time.time()
    data = domains or build_domains(cfg, progress)
    model = CycleGAN(cfg)
    history: dict = {"steps": [], "data_seconds": round(time.time() - t0, 1), "n_ct_slices": int(len(data.ct)),
                     "n_mr_slices": int(len(data.mr)), "subjects": data.subjects}
    history, best = trainer.resume_or_init(model, history, METRIC, resume, init_from, init_from_checkpoint)
    rng = np.random.default_rng([cfg.seed, model.step])
    gen = torch.Generator().manual_seed(cfg.seed + model.step)

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
    trainer.add_train_arguments(p, CONFIGS, "runs/ct", "small_curve -> small_curve_skip_ngf")
    p.add_argument("--lambda-identity", type=float, default=None)
    p.add_argument("--lambda-edge", type=float, default=None)
    p.add_argument("--lambda-ngf", type=float, default=None)
    p.add_argument("--lambda-tv", type=float, default=None)
    a = p.parse_args(argv)
    cfg = trainer.config_from_args(a, CONFIGS, TrainConfig.from_dict, lambda_identity=a.lambda_identity,
                                   lambda_edge=a.lambda_edge, lambda_ngf=a.lambda_ngf, lambda_tv=a.lambda_tv)
    trainer.print_summary(train(cfg, a.out, resume=a.resume, progress=not a.no_progress, init_from=a.init_from))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
