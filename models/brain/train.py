"""Train seed 002's conditional multi-contrast translator on phantom brain slices.

Unpaired, as the seed: every training image is one random contrast of one random slice
of one random subject; its registered siblings are never used, unless `lambda_paired` > 0
(an L1 pull of each translation towards its registered sibling, which the seed does not
have: only the `small_paired` config uses it). Per image x of contrast i
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
    python -m models.brain.train --resume runs/brain_small/latest.pt --steps 4000
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from tqdm import tqdm

from dicom_synth.intensity import normalise_slices
from models.brain.networks import BrainNetConfig, ConditionalTranslator, ContrastDiscriminator
from models.brain.phantom import CONTRASTS, generate_subject, split_seeds
from models.chain import carried_times
from models.common import trainer
from models.common.layers import init_weights
from models.common.structure import brain_mask, structure_map, structure_map_soft, structure_map_torch

METRIC = "val_mae"  # mean absolute error of every translation inside the head on the validation subjects


@dataclass(frozen=True)
class TrainConfig:
    """Every option of a run; saved in each checkpoint and in the model card."""

    name: str = "small"
    net: BrainNetConfig = field(default_factory=lambda: BrainNetConfig(ngf=12, ndf=12, enc_blocks=1, dec_blocks=2))
    n_train: int = 24
    n_val: int = 2
    slices_per_subject: int = 12
    size: int = 128
    crop: int = 64
    batch_size: int = 2
    steps: int = 3000
    lr: float = 2e-4
    beta1: float = 0.5
    decay_from: float = 0.6
    full_size_from: float = 0.8  # last 20 % of steps on whole slices (instance-norm statistics as exported)
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
    # With registered siblings: the structure term compares the output's Algorithm-1 map with
    # the *target's* instead of the input's, so edges the target adds (the enhancing rim) are
    # asked for, not penalised.
    structure_from_target: bool = False
    # With the input gate and registered siblings: the gate is pulled towards 1 where the
    # target equals the input within `gate_tolerance` ([-1, 1] units) and towards 0 elsewhere,
    # so unchanged anatomy passes through and only what the contrast changes is drawn.
    lambda_gate: float = 0.0
    gate_tolerance: float = 0.15
    # The gate term applies only to samples whose target repeats the input (within the
    # tolerance) over at least this fraction of the head (T1 <-> T1c, not FLAIR -> T1, where
    # a pixel matches by chance); 0: every sample.
    gate_min_agreement: float = 0.0
    # ...and the gates of the other samples are pulled shut (towards 0 everywhere) instead of
    # left free: a gate opened for T1 -> T1c otherwise opens for FLAIR -> T1c too.
    gate_close_others: bool = False
    # ...and the pixels where the target differs weigh as much in total as those where it
    # repeats the input (the enhancing rim is a few pixels; unweighted, the gate opens over it).
    gate_balanced: bool = False
    # ...or, unbalanced, each pixel where the target differs weighs this many times the others.
    gate_change_weight: float = 1.0
    # With a tumour annotation (the phantom's rim and necrotic core; BRATS ships one too): the
    # tumour, grown by this many pixels, counts as "changes" in the gate term even where this
    # sample's target happens to repeat the input, so the gate shuts over all of it and only
    # there draws what the input cannot show (the rim is nearly invisible on T1). -1: off.
    gate_lesion_margin: int = -1
    # ...and each of those pixels weighs this many times the unchanged ones (0: as any changed pixel).
    gate_lesion_weight: float = 0.0
    # With the input gate and registered siblings: the decoder's own image (before the gate mixes
    # in the input) also gets the paired L1, with this weight. Trained only through (1 - g), the
    # decoder is free to be wrong wherever the gate is open, and that leaks through wherever the
    # gate is half open (CSF and cortex beside the enhancing dura: T1 -> T1c too bright there).
    lambda_decoded: float = 0.0
    lr_gate_mult: float = 1.0  # learning rate of the decoder's input gate, times lr
    mirror: bool = True
    val_every: int = 250
    seed: int = 0
    threads: int = 2
    device: str = "cpu"

    def __post_init__(self) -> None:
        trainer.require_multiples(self.net.spatial_multiple, crop=self.crop, size=self.size)
        if self.net.n_contrasts != len(CONTRASTS):
            raise ValueError(f"the phantom has {len(CONTRASTS)} contrasts")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        d = dict(d)
        d["net"] = BrainNetConfig(**d["net"])
        return cls(**d)


def _gated_stage(name: str, gate_source: bool = False, **options) -> TrainConfig:
    """A 1500-step fine-tuning stage of the CPU network with the input gate (to follow a
    small_paired run): a quarter of its learning rate, 40x that for the gate."""
    options = {"lambda_paired": 10.0, "lambda_change": 10.0, "lr": 5e-5, "lr_gate_mult": 40.0, "steps": 1500,
               **options}
    return TrainConfig(name=name, net=BrainNetConfig(ngf=12, ndf=12, enc_blocks=1, dec_blocks=2, input_gate=True,
                                                     gate_source=gate_source), **options)


_NEAR = {"lambda_gate": 5.0, "gate_min_agreement": 0.9}  # the gate term for T1 <-> T1c only

CONFIGS: dict[str, TrainConfig] = {
    # 2 CPU cores, ~10 minutes: the seed's objective (unpaired).
    "small": TrainConfig(),
    # The same plus an L1 pull of each translation towards its registered sibling (not in
    # the seed; for data sets that, like BRATS and the phantom, are registered).
    "small_paired": TrainConfig(name="small_paired", lambda_paired=10.0),
    # small_paired with the decoder's input gate (`Decoder`): T1 <-> T1c keep the input's pixels.
    # Meant to fine-tune a small_paired run (--init-from): a quarter of its learning rate for
    # what it learnt, 40x that for the new gate (Adam moves a parameter about lr per step).
    "small_paired_gate": _gated_stage("small_paired_gate", lambda_change=0.0),
    # Fine-tunes a small_paired run (--init-from) where its translations barely differ from
    # the input (T1 <-> T1c): the paired term weighted to the pixels the contrasts change
    # (pooled body SSIM 0.701 -> 0.805; T1 <-> T1c alone did not improve).
    "small_paired_change": TrainConfig(name="small_paired_change", lambda_paired=10.0, lambda_change=10.0,
                                       lr=1e-4, steps=1500),
    # small_paired_change's weighting with the input gate, to fine-tune a small_paired_change run
    # (the demo runs it twice: pooled body SSIM 0.805 -> 0.824 -> 0.841, T1->T1c 0.881 -> 0.904
    # -> 0.908, against 0.940 for the input itself).
    "small_paired_change_gate": _gated_stage("small_paired_change_gate"),
    # small_paired_change_gate with the structure term against the target's edges.
    "small_paired_change_gate_st": _gated_stage("small_paired_change_gate_st", structure_from_target=True),
    # small_paired_change_gate with the gate told where the target repeats the input. Tried as a
    # fourth stage after the demo's: T1->T1c body SSIM 0.908 -> 0.910, MAE 0.0269 -> 0.0230 (the
    # input: 0.940 / 0.0183), 17 -> 13 shortfall cells, but FLAIR->T1/T1c 0.921/0.887 ->
    # 0.878/0.850 and pooled body SSIM 0.841 -> 0.839; not adopted.
    "small_paired_change_gate_sup": _gated_stage("small_paired_change_gate_sup", lambda_gate=2.0),
    # small_paired_change_gate_sup with the gate term only where the target repeats the input
    # over nearly all the head (gate_min_agreement 0.9: T1 <-> T1c agree on 94-99 % of a crop,
    # FLAIR <-> T1 on at most ~83 %), and stronger. After v0.3.0: 10 shortfall cells, but the
    # gate the decoder shares opened for FLAIR -> T1 too (0.46 -> 0.68; body SSIM 0.921 -> 0.876).
    "small_paired_change_gate_near": _gated_stage("small_paired_change_gate_near", **_NEAR),
    # ... with the other samples' gates pulled shut: every gate shut, T1->T1c 0.877 (worse).
    "small_paired_change_gate_near_closed": _gated_stage("small_paired_change_gate_near_closed", **_NEAR,
                                                         gate_close_others=True),
    # The gate knows the source contrast (`gate_source`), so T1 <-> T1c's gates open without
    # opening FLAIR -> T1c's. Demo stages, twice after v0.3.0: shortfall cells 17 -> 8 -> 5,
    # T1->T1c body SSIM 0.908 -> 0.936 -> 0.940 (input 0.940), but the gate opened over the
    # enhancing rim too: tumour MAE 0.91 -> 0.96 -> 0.99 of the input's.
    "small_paired_change_gate_pair": _gated_stage("small_paired_change_gate_pair", gate_source=True, **_NEAR),
    # ... with the gate term balanced between the pixels the contrast changes and the rest
    # (`gate_balanced`): the gate shuts over the rim again (tumour 0.97 of the input's).
    "small_paired_change_gate_pair_bal": _gated_stage("small_paired_change_gate_pair_bal", gate_source=True,
                                                      **_NEAR, gate_balanced=True),
    # ... and three times the weight on drawing what changes: the demo's last stage (pooled
    # body SSIM 0.865, 10 shortfall cells, all T1->T1c; tumour 0.94 of the input's).
    "small_paired_change30_gate_pair_bal": _gated_stage("small_paired_change30_gate_pair_bal", gate_source=True,
                                                        **_NEAR, gate_balanced=True, lambda_change=30.0),
    # Between the two: the changed pixels weigh 5x in the gate term instead of half the total.
    # After two pair stages: like change30_gate_pair (4 cells, ties; tumour 0.995 of the
    # input's): 5x does not keep the rim's gate shut, only balancing does.
    "small_paired_change30_gate_pair_w5": _gated_stage("small_paired_change30_gate_pair_w5", gate_source=True,
                                                       **_NEAR, gate_change_weight=5.0, lambda_change=30.0),
    # The same at 20x and 50x (balancing weighs the changed pixels ~16-100x in T1 <-> T1c crops),
    # after two pair stages, scored behind v0.5.0's input-guided filter: 20x beats both
    # baselines on every metric of every direction (T1->T1c body SSIM 0.948 vs the input's
    # 0.940), but inside the tumour its T1c is the T1 (0.99 of the input's error: fails the
    # committed-weights test); 50x draws the rim (0.96) and loses 7 cells to the input. Not
    # adopted: v0.5.0 (balanced) draws it at 0.92 and loses 5.
    "small_paired_change30_gate_pair_w20": _gated_stage("small_paired_change30_gate_pair_w20", gate_source=True,
                                                        **_NEAR, gate_change_weight=20.0, lambda_change=30.0),
    # 20x with the annotated tumour (grown by 2 px) counted as changing in the gate term. After
    # two pair stages, behind the filter: 1 shortfall cell (T1->T1c body MAE 0.0184 vs 0.0183),
    # but the gate stays open over the tumour (mean 0.92; tumour 0.99 of the input's error).
    "small_paired_change30_gate_pair_w20_lesion": _gated_stage(
        "small_paired_change30_gate_pair_w20_lesion", gate_source=True, **_NEAR, gate_change_weight=20.0,
        lambda_change=30.0, gate_lesion_margin=2),
    # ... with the tumour's pixels weighing 200x in the gate term: the gate shuts over the
    # tumour (mean 0.39) but the decoder draws it at only 0.79 of the input's error there
    # (tumour 0.95 overall), 3 shortfall cells, T1c->T1 worse (tumour 0.10 vs 0.04). Not adopted.
    "small_paired_change30_gate_pair_w20_lesion200": _gated_stage(
        "small_paired_change30_gate_pair_w20_lesion200", gate_source=True, **_NEAR, gate_change_weight=20.0,
        lambda_change=30.0, gate_lesion_margin=2, gate_lesion_weight=200.0),
    "small_paired_change30_gate_pair_w50": _gated_stage("small_paired_change30_gate_pair_w50", gate_source=True,
                                                        **_NEAR, gate_change_weight=50.0, lambda_change=30.0),
    # The demo's last stage again on 96 training subjects instead of 24 (the rim's look on T1
    # varies by subject), and the same with the changed pixels weighing 10x instead of 30x in
    # the paired L1 (30x draws enhancement over the oedema wherever a rim might be). 3000 steps
    # from v0.5.0's network, scored behind the filter: 30x pooled body SSIM 0.888 -> 0.901,
    # T1->T1c short of the input on 2 cells (unit and body MAE; body SSIM 0.944 vs 0.940 now
    # beats it), tumour 0.925 of the input's error, the oedema no longer painted (MAE 0.021 as
    # the input's); 10x: the same 2 cells, tumour 0.956.
    "small_paired_change30_gate_pair_bal_n96": _gated_stage("small_paired_change30_gate_pair_bal_n96",
                                                            gate_source=True, **_NEAR, gate_balanced=True,
                                                            lambda_change=30.0, n_train=96, steps=3000),
    "small_paired_change10_gate_pair_bal_n96": _gated_stage("small_paired_change10_gate_pair_bal_n96",
                                                            gate_source=True, **_NEAR, gate_balanced=True,
                                                            lambda_change=10.0, n_train=96, steps=3000),
    # ... continued on 192 subjects (from a _n96 run). 3000 steps: 2 cells (unit MAE 0.01022 vs
    # 0.01019, body MAE 0.0198 vs 0.0183), tumour 0.902, FLAIR -> T1c's tumour now better than
    # the input's (0.307 vs 0.329), pooled body SSIM 0.904.
    "small_paired_change30_gate_pair_bal_n192": _gated_stage("small_paired_change30_gate_pair_bal_n192",
                                                             gate_source=True, **_NEAR, gate_balanced=True,
                                                             lambda_change=30.0, n_train=192, steps=3000),
    # The _n96 stage with the decoder's own image pulled to the target too (`lambda_decoded`).
    # 3000 steps from a _n96 run: 1 cell (body MAE 0.0194 vs 0.0183), tumour 0.827 of the
    # input's error (the rim drawn better), pooled body SSIM 0.904. What is left is CSF beside
    # the enhancing dura, where the gate is half open (0.49) and the decoder blurs the dura in.
    "small_paired_change30_gate_pair_bal_n96_dec": _gated_stage(
        "small_paired_change30_gate_pair_bal_n96_dec", gate_source=True, **_NEAR, gate_balanced=True,
        lambda_change=30.0, n_train=96, lambda_decoded=5.0, steps=3000),
    # ... on 192 subjects (from a _n96_dec run), and the same with the decoder's term at 20.
    # 3000 steps each: 1 cell each (T1->T1c body MAE 0.0191 / 0.0190 vs 0.0183), tumour 0.70 /
    # 0.67 of the input's error, FLAIR -> T1c's tumour better than the input's (0.313 vs 0.329).
    # _dec20 run twice (v0.6.0's network): still body MAE 0.0191 alone; with the T1 -> T1c gate
    # bias chosen on validation subjects (+5.5, `models.brain.gate_bias`) no shortfall anywhere.
    "small_paired_change30_gate_pair_bal_n192_dec": _gated_stage(
        "small_paired_change30_gate_pair_bal_n192_dec", gate_source=True, **_NEAR, gate_balanced=True,
        lambda_change=30.0, n_train=192, lambda_decoded=5.0, steps=3000),
    "small_paired_change30_gate_pair_bal_n192_dec20": _gated_stage(
        "small_paired_change30_gate_pair_bal_n192_dec20", gate_source=True, **_NEAR, gate_balanced=True,
        lambda_change=30.0, n_train=192, lambda_decoded=20.0, steps=3000),
    # small_paired_change_gate_pair with three times the weight on what changes, unbalanced
    # (after two pair stages: 4 shortfall cells, ties at two decimals, but the T1c it makes
    # from a T1 is the T1: tumour 0.995 of the input's).
    "small_paired_change30_gate_pair": _gated_stage("small_paired_change30_gate_pair", gate_source=True, **_NEAR,
                                                    lambda_change=30.0),
    # The pair gates with the other pairs' gates pulled shut: FLAIR's gates shut, T1->T1c 0.930.
    "small_paired_change_gate_pair_closed": _gated_stage("small_paired_change_gate_pair_closed", gate_source=True,
                                                         **_NEAR, gate_close_others=True),
    # A GPU: the seed's scale (BRATS: 274 volumes x 50 slices, 240x240, 50 epochs, batch 1).
    "full": TrainConfig(name="full", net=BrainNetConfig(ngf=64, ndf=64, enc_blocks=3, dec_blocks=3), n_train=250,
                        n_val=25, slices_per_subject=50, size=256, crop=256, batch_size=1, steps=50 * 250 * 50,
                        val_every=5000, threads=8, device="cuda"),
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
    lesion: np.ndarray | None = None  # (slices, H, W) 0/1, with `gate_lesion_margin`


def prepare(images: np.ndarray, beta: float, p: int) -> tuple[np.ndarray, np.ndarray]:
    """Structure maps and background masks for (S, C, H, W) normalised slices."""
    s = np.empty_like(images)
    b = np.empty_like(images)
    for i in range(images.shape[0]):
        for c in range(images.shape[1]):
            s[i, c] = structure_map(images[i, c], beta)
            b[i, c] = brain_mask(images[i, c], p)
    return s, b


def lesion_mask(tumour_fraction: np.ndarray, margin: int) -> np.ndarray:
    """(N, H, W) tumour fraction -> 0/1 mask of the tumour grown by `margin` pixels per slice."""
    m = tumour_fraction > 0
    if margin > 0:
        m = np.stack([ndimage.binary_dilation(k, iterations=margin) if k.any() else k for k in m])
    return m.astype(np.float32)


def load_subjects(seeds: list[int], cfg: TrainConfig, desc: str, progress: bool,
                  lesions: list[np.ndarray] | None = None) -> np.ndarray:
    """(slices, contrasts, H, W) in [-1, 1]; with `lesions`, each subject's `lesion_mask` is
    appended to it."""
    out = []
    for seed in tqdm(seeds, desc=desc, disable=not progress, leave=False):
        subj = generate_subject(seed, n_slices=cfg.slices_per_subject, size=cfg.size)
        out.append(np.stack([normalise_slices(subj.images[c]) for c in CONTRASTS], 1))
        if lesions is not None:
            lesions.append(lesion_mask(subj.tumour_fraction, cfg.gate_lesion_margin))
    return np.concatenate(out)


def build_data(cfg: TrainConfig, progress: bool = True) -> BrainData:
    lesions: list[np.ndarray] | None = [] if cfg.gate_lesion_margin >= 0 else None
    train = load_subjects(split_seeds("train", cfg.n_train), cfg, "train subjects", progress, lesions)
    val = load_subjects(split_seeds("val", cfg.n_val), cfg, "val subjects", progress)
    s, b = prepare(train, cfg.beta, cfg.mask_expand)
    _, vb = prepare(val, cfg.beta, cfg.mask_expand)
    return BrainData(train, s, b, val, vb, None if lesions is None else np.concatenate(lesions))


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
                   gen: torch.Generator, paired: torch.Tensor | None = None,
                   lesion: torch.Tensor | None = None) -> dict[str, float]:
        """x (B,1,h,w) of contrasts src (B,); struct/bg its Algorithm-1/2 maps; `paired`
        (B, C, h, w) registered siblings, used only when lambda_paired > 0; `lesion` (B,1,h,w)
        the grown tumour mask, used by the gate term when given."""
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
        s1, s2 = (structure_reference(struct, paired, t, c) for t in (t1, t2))
        loss_struct = (F.mse_loss(structure_map_soft(y1, c.beta), s1)
                       + F.mse_loss(structure_map_soft(y2, c.beta), s2))
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
                                           c.gate_min_agreement, c.gate_close_others, c.gate_balanced,
                                           c.gate_change_weight, changed=lesion, changed_weight=c.gate_lesion_weight)
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


def structure_reference(struct: torch.Tensor, paired: torch.Tensor | None, target: torch.Tensor,
                        cfg: TrainConfig) -> torch.Tensor:
    """The Algorithm-1 map a translation's edges are compared with: the input's (the seed), or
    with `structure_from_target` and registered siblings the target contrast's own."""
    if not cfg.structure_from_target or paired is None:
        return struct
    return structure_map_torch(paired[torch.arange(len(target)), target.cpu()][:, None].to(struct), cfg.beta)


def gate_target_l1(gate: torch.Tensor, target: torch.Tensor, source: torch.Tensor, tolerance: float,
                   head: torch.Tensor | None = None, min_agreement: float = 0.0,
                   close_others: bool = False, balanced: bool = False, change_weight: float = 1.0,
                   changed: torch.Tensor | None = None, changed_weight: float = 0.0) -> torch.Tensor:
    """L1 between the decoder's gate and 1 where |target - source| < tolerance, else 0.
    With `min_agreement` > 0, only samples whose target agrees with the source on at least
    that fraction of `head` (B,1,h,w; 1 inside) are told so; the others' gates are left free,
    or with `close_others` told 0 everywhere. `balanced`: per sample, the mean error where
    the target repeats the source and the mean where it differs count alike; else each pixel
    where it differs weighs `change_weight` times the others. `changed` (B,1,h,w; 1 inside):
    pixels told 0 whatever the target (the annotated tumour; which samples agree is still
    judged from the images alone), each weighing `changed_weight` times an unchanged pixel
    when that is > 0 (unbalanced only)."""
    agrees = ((target - source).abs() < tolerance).to(gate)
    same = agrees if changed is None else agrees * (1 - changed.to(gate))
    err = (gate - same).abs().flatten(1)
    if balanced:
        s = same.flatten(1)
        per_sample = 0.5 * ((err * s).sum(1) / s.sum(1).clamp_min(1.0)
                                 + (err * (1 - s)).sum(1) / (1 - s).sum(1).clamp_min(1.0))
    else:
        w = 1.0 + (change_weight - 1.0) * (1 - same.flatten(1))
        if changed is not None and changed_weight > 0:
            c = changed.to(gate).flatten(1)
            w = w * (1 - c) + changed_weight * c
        per_sample = (err * w).sum(1) / w.sum(1)
    if min_agreement <= 0:
        return per_sample.mean()
    area = head.flatten(1).sum(1).clamp_min(1.0)
    near = ((agrees * head).flatten(1).sum(1) / area >= min_agreement).to(gate)
    if not close_others:
        return (near * per_sample).mean()
    return (near * per_sample + (1 - near) * gate.flatten(1).mean(1)).mean()


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
    les = np.zeros_like(x)
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
        if data.lesion is not None:
            les[i, 0] = data.lesion[idx[i]][win][sl]
    return (torch.from_numpy(x), torch.from_numpy(src), torch.from_numpy(st), torch.from_numpy(bg),
            torch.from_numpy(pr), None if data.lesion is None else torch.from_numpy(les))


def train(cfg: TrainConfig, out_dir: Path, resume: Path | None = None, progress: bool = True,
          data: BrainData | None = None, init_from: Path | None = None) -> dict:
    """Run (or resume) training; writes latest.pt, best.pt, history.json, config.json.
    `init_from`: start from another run's network weights (step 0, fresh optimisers; new
    layers such as the input gate keep their initialisation)."""
    out_dir = trainer.prepare(cfg, out_dir)
    t0 = time.time()
    data = data or build_data(cfg, progress)
    model = MultiContrastGAN(cfg)
    history: dict = {"steps": [], "data_seconds": round(time.time() - t0, 1), "n_slices": int(len(data.images)),
                     "train_seeds": split_seeds("train", cfg.n_train)[0], "val_seeds": split_seeds("val", cfg.n_val)[0]}
    history, best = trainer.resume_or_init(model, history, METRIC, resume, init_from, init_from_checkpoint)
    rng = np.random.default_rng([cfg.seed, model.step])
    gen = torch.Generator().manual_seed(cfg.seed + model.step)

    def step_once(step: int) -> dict[str, float]:
        crop = cfg.size if step >= cfg.full_size_from * cfg.steps else cfg.crop
        x, src, st, bg, pr, les = sample_batch(data, cfg, rng, crop)
        dev = model.device
        return model.train_step(x.to(dev), src, st.to(dev), bg.to(dev), gen, pr if cfg.lambda_paired > 0 else None,
                                None if les is None else les.to(dev))

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
    trainer.add_train_arguments(p, CONFIGS, "runs/brain", "small_paired -> small_paired_gate")
    a = p.parse_args(argv)
    cfg = trainer.config_from_args(a, CONFIGS, TrainConfig.from_dict)
    trainer.print_summary(train(cfg, a.out, resume=a.resume, progress=not a.no_progress, init_from=a.init_from))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
