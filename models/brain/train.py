"""Train seed 002's conditional multi-contrast translator on phantom brain slices.

Unpaired, as the seed: every training image is one random contrast of one random slice
of one random subject; its registered siblings are never used, unless `lambda_paired` > 0
(an L1 pull of each translation towards its registered sibling, which the seed does not
have: the `small` and `full` configs use it, `seed` does not). Per image x of contrast i
and two other contrasts j, k drawn at random, with code = E(x) (dropout 0.1 on the input):

- reconstruction      ||x - G(code, i)||²                                  (loss_sv)
- adversarial + class G(code, j) judged real and of class j by D (LSGAN)   (loss_G, loss_G,class)
- cycle               ||x - G(E(G(code, j)), i)||²                         (loss_cycle)
- cycle consistency   ||G(E(G(code, j)), i) - G(E(G(code, k)), i)||²       (loss_cycle,consistency)
- code consistency    ||code - E(G(code, j))||²                            (loss_code,consistency)
- structure           ||f(x) - f(G(code, j))||², f = Algorithm 1 (soft)    (loss_sv,f)
- background          ||G(code, j) in the Algorithm-2 background||²        (the seed's mask terms)
D learns real images as real and of their class, translations as fake and (as the seed's
loss_D,aided) of their target class. Adam lr 2e-4, β1 0.5. The seed's lesion-label decoder
and VAE structure generator are not part of translation and are not built here.

    python -m models.brain.train --config small --out runs/brain_small --threads 1
    python -m models.brain.train --config full --out runs/brain_full         # a GPU
    python -m models.brain.build_demo            # the demo's whole recipe (models/brain/recipe.py)
    python -m models.brain.train --resume runs/brain_small/latest.pt --steps 4000
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from dicom_synth.intensity import normalise_slices
from models.brain.networks import BrainNetConfig, ConditionalTranslator, ContrastDiscriminator
from models.brain.phantom import CONTRASTS, generate_subject, split_seeds
from models.chain import carried_times
from models.common import trainer
from models.common.config import RunConfig
from models.common.layers import init_weights
from models.common.structure import brain_mask, structure_map, structure_map_soft

METRIC = "val_mae"  # mean absolute error of every translation inside the head on the validation subjects


@dataclass(frozen=True)
class TrainConfig(RunConfig):
    """Every option of a run (`RunConfig`'s and the brain family's); saved in each checkpoint
    and in the model card."""

    # options tried and removed (models/EXPERIMENTS.md), with the value that had them off: a
    # saved config that holds that value still loads
    RETIRED: ClassVar[dict] = {"structure_from_target": False, "gate_close_others": False, "gate_change_weight": 1.0,
                               "gate_lesion_margin": -1, "gate_lesion_weight": 0.0}

    net: BrainNetConfig = field(default_factory=lambda: BrainNetConfig(ngf=12, ndf=12, enc_blocks=1, dec_blocks=2))
    decay_from: float = 0.6
    input_dropout: float = 0.1  # seed 002: dropout 0.1 at the input
    beta: float = 0.5  # Algorithm 1 threshold on [-1, 1] images
    mask_expand: int = 4  # Algorithm 2's p
    lambda_adv: float = 1.0
    lambda_cls: float = 1.0
    lambda_rec: float = 10.0
    lambda_cycle: float = 10.0
    lambda_cycle_consistency: float = 1.0
    lambda_code: float = 1.0
    lambda_structure: float = 2.0
    lambda_background: float = 2.0
    lambda_paired: float = 0.0  # L1 to the registered sibling: not in the seed (see CONFIGS)
    # Each pixel's paired L1 weighs 1 + lambda_change * |target - source| ([-1, 1] units): where
    # the two contrasts differ (T1 -> T1c: the enhancing rim) counts more than where the target
    # repeats the input. No labels needed.
    lambda_change: float = 0.0
    # With the input gate and registered siblings: the gate is pulled towards 1 where the
    # target equals the input within `gate_tolerance` ([-1, 1] units) and towards 0 elsewhere,
    # so unchanged anatomy passes through and only what the contrast changes is drawn.
    lambda_gate: float = 0.0
    gate_tolerance: float = 0.15
    # The gate term applies only to samples whose target repeats the input (within the
    # tolerance) over at least this fraction of the head (T1 <-> T1c, not FLAIR -> T1, where
    # a pixel matches by chance); 0: every sample. The others' gates are left free.
    gate_min_agreement: float = 0.0
    # ...and the pixels where the target differs weigh as much in total as those where it
    # repeats the input (the enhancing rim is a few pixels; unweighted, the gate opens over it).
    gate_balanced: bool = False
    # With the input gate and registered siblings: the decoder's own image (before the gate mixes
    # in the input) also gets the paired L1, with this weight. Trained only through (1 - g), the
    # decoder is free to be wrong wherever the gate is open, and that leaks through wherever the
    # gate is half open (CSF and cortex beside the enhancing dura: T1 -> T1c too bright there).
    lambda_decoded: float = 0.0
    lr_gate_mult: float = 1.0  # learning rate of the decoder's input gate, times lr

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.net.n_contrasts != len(CONTRASTS):
            raise ValueError(f"the phantom has {len(CONTRASTS)} contrasts")


_SEED_SCALE = {"n_train": 250, "n_val": 25, "slices_per_subject": 50, "size": 256, "crop": 256, "batch_size": 1,
               "steps": 50 * 250 * 50, "val_every": 5000, "threads": 8, "device": "cuda"}

CONFIGS: dict[str, TrainConfig] = {
    # Seed 002 as far as it says: unpaired, its losses, dropout 0.1 at the input, Adam lr 2e-4,
    # beta1 0.5, batch 1, 50 epochs of BRATS (274 volumes x slices 55-105, 240x240: here 250
    # training subjects x 50 slices of 256x256); the network's widths are not given (64 here).
    "seed": TrainConfig(name="seed", net=BrainNetConfig(ngf=64, ndf=64, enc_blocks=3, dec_blocks=3), **_SEED_SCALE),
    # A GPU: the seed's scale with `small`'s objective (the paired L1); the recipe's fine-tuning
    # stages (models/brain/recipe.py) may follow.
    "full": TrainConfig(name="full", net=BrainNetConfig(ngf=64, ndf=64, enc_blocks=3, dec_blocks=3),
                        lambda_paired=10.0, **_SEED_SCALE),
    # 2 CPU cores: the seed's losses plus an L1 pull of each translation towards its registered
    # sibling (for data sets that, like BRATS and the phantom, are registered); the first run of
    # the demo recipe (was small_paired).
    "small": TrainConfig(name="small", lambda_paired=10.0),
    "tiny": TrainConfig(name="tiny", net=BrainNetConfig(ngf=4, ndf=4, enc_blocks=1, dec_blocks=1, d_layers=2),
                        n_train=2, n_val=1, slices_per_subject=2, size=32, crop=32, batch_size=2, steps=3,
                        val_every=2),
}


@dataclass
class BrainData:
    """(slices, contrasts, H, W) arrays in [-1, 1], with Algorithm-1 maps and Algorithm-2 masks."""

    images: np.ndarray
    structure: np.ndarray
    background: np.ndarray
    val_images: np.ndarray
    val_background: np.ndarray


def prepare(images: np.ndarray, beta: float, p: int) -> tuple[np.ndarray, np.ndarray]:
    """Structure maps and background masks for (S, C, H, W) normalised slices."""
    s = np.empty_like(images)
    b = np.empty_like(images)
    for i in range(images.shape[0]):
        for c in range(images.shape[1]):
            s[i, c] = structure_map(images[i, c], beta)
            b[i, c] = brain_mask(images[i, c], p)
    return s, b


def load_subjects(seeds: list[int], cfg: TrainConfig, desc: str, progress: bool) -> np.ndarray:
    """(slices, contrasts, H, W) in [-1, 1]."""
    out = []
    for seed in tqdm(seeds, desc=desc, disable=not progress, leave=False):
        subj = generate_subject(seed, n_slices=cfg.slices_per_subject, size=cfg.size)
        out.append(np.stack([normalise_slices(subj.images[c]) for c in CONTRASTS], 1))
    return np.concatenate(out)


def build_data(cfg: TrainConfig, progress: bool = True) -> BrainData:
    train = load_subjects(split_seeds("train", cfg.n_train), cfg, "train subjects", progress)
    val = load_subjects(split_seeds("val", cfg.n_val), cfg, "val subjects", progress)
    s, b = prepare(train, cfg.beta, cfg.mask_expand)
    _, vb = prepare(val, cfg.beta, cfg.mask_expand)
    return BrainData(train, s, b, val, vb)


def onehot(idx: torch.Tensor, n: int) -> torch.Tensor:
    return F.one_hot(idx, n).float()


class MultiContrastGAN(trainer.GanModel):
    """Translator (encoder + decoder), discriminator, optimisers, one training step."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.device = trainer.device_of(cfg.device)
        self.T = ConditionalTranslator(cfg.net).to(self.device)
        self.D = ContrastDiscriminator(cfg.net).to(self.device)
        init_weights(self.T)
        init_weights(self.D)
        betas = (cfg.beta1, 0.999)
        gate = [p for n, p in self.T.named_parameters() if n.startswith("decoder.gate")]
        rest = [p for n, p in self.T.named_parameters() if not n.startswith("decoder.gate")]
        groups = [{"params": rest, "lr_mult": 1.0}]
        if gate:
            groups.append({"params": gate, "lr_mult": cfg.lr_gate_mult})
        self.opt_g = torch.optim.Adam(groups, lr=cfg.lr, betas=betas)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=cfg.lr, betas=betas)
        self.step = 0

    def _set_lr(self) -> None:
        c = self.cfg
        start = int(c.decay_from * c.steps)
        frac = 1.0 if self.step < start else max(0.0, 1.0 - (self.step - start) / max(1, c.steps - start))
        for opt in (self.opt_g, self.opt_d):
            for g in opt.param_groups:
                g["lr"] = c.lr * frac * g.get("lr_mult", 1.0)

    def train_step(self, x: torch.Tensor, src: torch.Tensor, struct: torch.Tensor, bg: torch.Tensor,
                   gen: torch.Generator, paired: torch.Tensor | None = None) -> dict[str, float]:
        """x (B,1,h,w) of contrasts src (B,); struct/bg its Algorithm-1/2 maps; `paired`
        (B, C, h, w) registered siblings, used only when lambda_paired > 0."""
        c, n = self.cfg, self.cfg.net.n_contrasts
        self._set_lr()
        b = x.shape[0]
        # two distinct targets, both different from the source
        r1 = torch.randint(1, n, (b,), generator=gen)
        r2 = (r1 - 1 + torch.randint(1, n - 1, (b,), generator=gen)) % (n - 1) + 1
        t1, t2 = ((src + r1) % n).to(self.device), ((src + r2) % n).to(self.device)
        src = src.to(self.device)
        enc, dec = self.T.encoder, self.T.decoder
        x_in = F.dropout(x, c.input_dropout, training=True) if c.input_dropout > 0 else x
        code, sk = enc.encode(x_in)
        s1h, t1h, t2h = onehot(src, n), onehot(t1, n), onehot(t2, n)
        rec = dec(code, s1h, sk, x, source_condition=s1h)  # the gate (if any) sees the clean input
        y1, g1, d1 = dec(code, t1h, sk, x, with_gate=True, source_condition=s1h, with_decoded=True)
        y2, g2, d2 = dec(code, t2h, sk, x, with_gate=True, source_condition=s1h, with_decoded=True)
        (code1, sk1), (code2, sk2) = enc.encode(y1), enc.encode(y2)
        cyc1 = dec(code1, s1h, sk1, y1, source_condition=t1h)
        cyc2 = dec(code2, s1h, sk2, y2, source_condition=t2h)
        self.D.requires_grad_(False)
        loss_adv = x.new_zeros(())
        loss_cls = x.new_zeros(())
        for y, t in ((y1, t1), (y2, t2)):
            d, cls = self.D(y)
            loss_adv = loss_adv + F.mse_loss(d, torch.ones_like(d))
            loss_cls = loss_cls + F.mse_loss(cls, onehot(t, n))
        loss_rec = F.mse_loss(rec, x)
        loss_cycle = F.mse_loss(cyc1, x) + F.mse_loss(cyc2, x)
        loss_cc = F.mse_loss(cyc1, cyc2)
        loss_code = F.mse_loss(code1, code) + F.mse_loss(code2, code)
        loss_struct = (F.mse_loss(structure_map_soft(y1, c.beta), struct)
                       + F.mse_loss(structure_map_soft(y2, c.beta), struct))
        loss_bg = (((y1 + 1) / 2 * bg) ** 2).mean() + (((y2 + 1) / 2 * bg) ** 2).mean()
        loss_g = (c.lambda_adv * loss_adv + c.lambda_cls * loss_cls + c.lambda_rec * loss_rec
                  + c.lambda_cycle * loss_cycle + c.lambda_cycle_consistency * loss_cc + c.lambda_code * loss_code
                  + c.lambda_structure * loss_struct + c.lambda_background * loss_bg)
        loss_paired = loss_decoded = x.new_zeros(())
        if c.lambda_paired > 0 and paired is not None:
            ar = torch.arange(b)
            loss_paired = (paired_l1(y1, paired[ar, t1.cpu()][:, None].to(y1), x, c.lambda_change)
                           + paired_l1(y2, paired[ar, t2.cpu()][:, None].to(y2), x, c.lambda_change))
            loss_g = loss_g + c.lambda_paired * loss_paired
            if c.lambda_decoded > 0 and g1 is not None:
                loss_decoded = (paired_l1(d1, paired[ar, t1.cpu()][:, None].to(d1), x, c.lambda_change)
                                + paired_l1(d2, paired[ar, t2.cpu()][:, None].to(d2), x, c.lambda_change))
                loss_g = loss_g + c.lambda_decoded * loss_decoded
        loss_gate = x.new_zeros(())
        if c.lambda_gate > 0 and paired is not None and g1 is not None:
            ar = torch.arange(b)
            loss_gate = sum(gate_target_l1(g, paired[ar, t.cpu()][:, None].to(x), x, c.gate_tolerance, 1 - bg,
                                           c.gate_min_agreement, c.gate_balanced)
                            for g, t in ((g1, t1), (g2, t2)))
            loss_g = loss_g + c.lambda_gate * loss_gate
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_g.step()
        self.D.requires_grad_(True)
        d_real, c_real = self.D(x)
        loss_d = F.mse_loss(d_real, torch.ones_like(d_real)) + F.mse_loss(c_real, onehot(src, n))
        for y, t in ((y1, t1), (y2, t2)):
            d, cls = self.D(y.detach())
            loss_d = loss_d + 0.5 * (F.mse_loss(d, torch.zeros_like(d)) + F.mse_loss(cls, onehot(t, n)))
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        self.opt_d.step()
        self.step += 1
        return {"adv": loss_adv.item(), "cls": loss_cls.item(), "rec": loss_rec.item(), "cycle": loss_cycle.item(),
                "cycle_consistency": loss_cc.item(), "code": loss_code.item(), "structure": loss_struct.item(),
                "background": loss_bg.item(), "paired": loss_paired.item(), "decoded": loss_decoded.item(),
                "gate": loss_gate.item(), "d": loss_d.item()}

    @torch.no_grad()
    def validate(self, images: np.ndarray, background: np.ndarray, stride: int = 3) -> float:
        """Mean MAE on [0, 1] inside the head over every source -> target pair, against the
        registered truth (every `stride`-th slice)."""
        n = self.cfg.net.n_contrasts
        imgs = images[::stride]
        fg = background[::stride] < 0.5
        total, count = 0.0, 0
        for s in range(n):
            x = torch.from_numpy(imgs[:, s:s + 1]).to(self.device)
            code, sk = self.T.encoder.encode(x)
            for t in range(n):
                if t == s:
                    continue
                cond = onehot(torch.full((len(imgs),), t, dtype=torch.long), n).to(self.device)
                scond = onehot(torch.full((len(imgs),), s, dtype=torch.long), n).to(self.device)
                pred = self.T.decoder(code, cond, sk, x, source_condition=scond).cpu().numpy()[:, 0]
                m = fg[:, s]
                total += float(np.abs(pred - imgs[:, t])[m].sum()) / 2.0
                count += int(m.sum())
        return total / max(count, 1)

    @property
    def nets(self) -> dict[str, torch.nn.Module]:
        return {"T": self.T, "D": self.D}


def paired_l1(y: torch.Tensor, target: torch.Tensor, source: torch.Tensor, change: float = 0.0) -> torch.Tensor:
    """L1 to the registered target, each pixel weighted 1 + change * |target - source|
    (normalised by the weights, so change = 0 is the plain mean)."""
    if change <= 0:
        return F.l1_loss(y, target)
    w = 1.0 + change * (target - source).abs()
    return (w * (y - target).abs()).sum() / w.sum()


def gate_target_l1(gate: torch.Tensor, target: torch.Tensor, source: torch.Tensor, tolerance: float,
                   head: torch.Tensor | None = None, min_agreement: float = 0.0,
                   balanced: bool = False) -> torch.Tensor:
    """L1 between the decoder's gate and 1 where |target - source| < tolerance, else 0.
    With `min_agreement` > 0, only samples whose target agrees with the source on at least
    that fraction of `head` (B,1,h,w; 1 inside) are told so; the others' gates are left free.
    `balanced`: per sample, the mean error where the target repeats the source and the mean
    where it differs count alike; else every pixel alike."""
    same = ((target - source).abs() < tolerance).to(gate)
    err = (gate - same).abs().flatten(1)
    if balanced:
        s = same.flatten(1)
        per_sample = 0.5 * ((err * s).sum(1) / s.sum(1).clamp_min(1.0)
                                 + (err * (1 - s)).sum(1) / (1 - s).sum(1).clamp_min(1.0))
    else:
        per_sample = err.sum(1) / err.shape[1]
    if min_agreement <= 0:
        return per_sample.mean()
    area = head.flatten(1).sum(1).clamp_min(1.0)
    near = ((same * head).flatten(1).sum(1) / area >= min_agreement).to(gate)
    return (near * per_sample).mean()


def load_translator(ckpt_path: Path) -> tuple[ConditionalTranslator, TrainConfig, dict]:
    return trainer.load_network(ckpt_path, TrainConfig.from_dict, ConditionalTranslator, "T")


def sample_batch(data: BrainData, cfg: TrainConfig, rng: np.random.Generator,
                 crop: int | None = None) -> tuple[torch.Tensor, ...]:
    """Random slices, each in one random contrast, random crop and mirror."""
    b, cs, h = cfg.batch_size, crop or cfg.crop, cfg.size
    n = data.images.shape[1]
    idx = rng.integers(len(data.images), size=b)
    src = rng.integers(n, size=b)
    x = np.empty((b, 1, cs, cs), np.float32)
    st, bg = np.empty_like(x), np.empty_like(x)
    pr = np.empty((b, n, cs, cs), np.float32)
    for i in range(b):
        for _ in range(6):
            y0, x0 = (int(v) for v in rng.integers(0, h - cs + 1, size=2))
            win = (slice(y0, y0 + cs), slice(x0, x0 + cs))
            if (data.background[idx[i], src[i]][win] < 0.5).mean() > 0.3:
                break
        flip = cfg.mirror and rng.random() < 0.5
        sl = (slice(None), slice(None, None, -1)) if flip else (slice(None), slice(None))
        x[i, 0] = data.images[idx[i], src[i]][win][sl]
        st[i, 0] = data.structure[idx[i], src[i]][win][sl]
        bg[i, 0] = data.background[idx[i], src[i]][win][sl]
        pr[i] = data.images[idx[i]][(slice(None), *win)][(slice(None), *sl)]
    return (torch.from_numpy(x), torch.from_numpy(src), torch.from_numpy(st), torch.from_numpy(bg),
            torch.from_numpy(pr))


def train(cfg: TrainConfig, out_dir: Path, resume: Path | None = None, progress: bool = True,
          data: BrainData | None = None, init_from: Path | None = None) -> dict:
    """Run (or resume) training; writes latest.pt, best.pt, history.json, config.json.
    `init_from`: start from another run's network weights (step 0, fresh optimisers; new
    layers such as the input gate keep their initialisation)."""
    out_dir = trainer.prepare(cfg, out_dir)
    t0 = time.time()
    phantom = data is None  # else a hospital's studies (models.brain.retrain): no phantom seeds
    data = trainer.rank_share(data or build_data(cfg, progress), "images", "structure", "background")
    model = MultiContrastGAN(cfg)
    history: dict = {"steps": [], "data_seconds": round(time.time() - t0, 1), "n_slices": int(len(data.images))}
    if phantom:
        history.update(train_seeds=split_seeds("train", cfg.n_train)[0], val_seeds=split_seeds("val", cfg.n_val)[0])
    history, best = trainer.resume_or_init(model, history, METRIC, resume, init_from, init_from_checkpoint)
    rng = np.random.default_rng(trainer.rank_seed([cfg.seed, model.step]))
    gen = torch.Generator().manual_seed(trainer.rank_seed(cfg.seed + model.step))

    def step_once(step: int) -> dict[str, float]:
        crop = cfg.size if step >= cfg.full_size_from * cfg.steps else cfg.crop
        x, src, st, bg, pr = sample_batch(data, cfg, rng, crop)
        dev = model.device
        return model.train_step(x.to(dev), src, st.to(dev), bg.to(dev), gen, pr if cfg.lambda_paired > 0 else None)

    return trainer.fit(model, cfg, out_dir, history, best, train_step=step_once,
                       validate=lambda: model.validate(data.val_images, data.val_background), metric=METRIC,
                       postfix=lambda losses: {"rec": f"{losses['rec']:.3f}", "cyc": f"{losses['cycle']:.3f}",
                                               "d": f"{losses['d']:.2f}"},
                       desc=f"multicontrast {cfg.name}", progress=progress)


def init_from_checkpoint(model: MultiContrastGAN, path: Path) -> dict:
    """Another run's network weights (step 0, fresh optimisers); new layers such as the input
    gate keep their initialisation."""
    ckpt = trainer.load_checkpoint(path)
    missing, unexpected = model.T.load_state_dict(ckpt["T"], strict=False)
    if unexpected or any(not k.startswith("decoder.gate") for k in missing):
        raise ValueError(f"{path} does not fit this network: missing {missing}, unexpected {unexpected}")
    model.D.load_state_dict(ckpt["D"])
    return {"checkpoint": str(path), "step": int(ckpt["step"]), "config": ckpt["config"]["name"],
            "new_layers": list(missing), **carried_times(ckpt.get("history", {}))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Train the seed-002 conditional multi-contrast translator.")
    trainer.add_train_arguments(p, CONFIGS, "runs/brain", "a small run's latest.pt")
    a = p.parse_args(argv)
    cfg = trainer.config_from_args(a, CONFIGS, TrainConfig.from_dict)
    trainer.print_summary(train(cfg, a.out, resume=a.resume, progress=not a.no_progress, init_from=a.init_from))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
