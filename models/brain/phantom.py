"""Seeded brain MRI phantom: T1, T2, T1c and FLAIR of one subject from tissue parameters.

Seed 002 works on BRATS (registered T1/T2/T1c/FLAIR with gliomas). Here each subject is
a labelled anatomy (scalp, skull with diploe, CSF, cortex with gyri, white matter, deep
grey matter, ventricles with choroid plexus, dura, sagittal sinus, and in most subjects a
tumour: necrotic core, enhancing rim, vasogenic oedema), and every contrast is computed
from proton density, T1, T2 and (for T1c) gadolinium concentration with the sequence's
signal equation, so the contrasts relate the way they do on a 3 T scanner:

- T1 (SE, TR 500, TE 12):   S = PD (1 - e^(-TR/T1)) e^(-TE/T2)
- T1c: the same with 1/T1 + r1·C (r1 = 4 /mM/s): rim, choroid plexus, dura, sinus enhance
- T2 (TSE, TR 5000, TE 100)
- FLAIR (TR 9000, TI 2500, TE 100): S = PD |1 - 2e^(-TI/T1) + e^(-TR/T1)| e^(-TE/T2),
  CSF nulled, oedema bright.

All four share one coil bias field and partial volume; each has its own Rician noise and
receiver scale. Pure numpy (the DICOM writer and the service's tests use it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from models.common.draw import Canvas, Ellipsoid, gaussian_blur, random_wobble, smooth_field
from models.common.split import SeedSplits

CONTRASTS = ("t1", "t2", "t1c", "flair")
SPLITS = SeedSplits({"train": 51_000, "val": 52_000, "test": 53_000})
SPLIT_BASE = SPLITS.base
R1_PER_MM_S = 4.0

# name: (PD, T1 ms, T2 ms, gadolinium mM after contrast)
TISSUES: dict[str, tuple[float, float, float, float]] = {
    "air": (0.0, 1000.0, 1.0, 0.0),
    "scalp": (0.90, 380.0, 130.0, 0.0),
    "muscle": (0.70, 1400.0, 45.0, 0.05),
    "bone": (0.05, 1000.0, 5.0, 0.0),
    "marrow": (0.85, 380.0, 120.0, 0.0),
    "dura": (0.60, 1000.0, 60.0, 0.40),
    "csf": (1.00, 4000.0, 2000.0, 0.0),
    "gm": (0.82, 1330.0, 100.0, 0.0),
    "wm": (0.70, 830.0, 75.0, 0.0),
    "deep_gm": (0.78, 1200.0, 85.0, 0.0),
    "choroid": (0.80, 1200.0, 100.0, 1.0),
    "sinus": (0.35, 1900.0, 150.0, 3.0),
    "oedema": (0.88, 1500.0, 160.0, 0.0),
    "rim": (0.85, 1500.0, 110.0, 0.5),
    "necrosis": (0.95, 2800.0, 400.0, 0.0),
}
NAMES = tuple(TISSUES)
L = {name: i for i, name in enumerate(NAMES)}
SEQUENCES = {  # TR, TE, TI (None: no inversion), contrast agent
    "t1": (500.0, 12.0, None, False),
    "t1c": (500.0, 12.0, None, True),
    "t2": (5000.0, 100.0, None, False),
    "flair": (9000.0, 100.0, 2500.0, False),
}


split_of = SPLITS.split_of
split_seeds = SPLITS.seeds


def signal_table(sequence: str, params: np.ndarray) -> np.ndarray:
    """Per-tissue signal of a sequence from (PD, T1, T2, C) rows."""
    tr, te, ti, contrast = SEQUENCES[sequence]
    pd, t1, t2, conc = params.T
    r1 = 1000.0 / t1 + (R1_PER_MM_S * conc if contrast else 0.0)  # 1/s
    e_tr = np.exp(-tr / 1000.0 * r1)
    if ti is None:
        mz = 1.0 - e_tr
    else:
        mz = np.abs(1.0 - 2.0 * np.exp(-ti / 1000.0 * r1) + e_tr)
    return (pd * mz * np.exp(-te / t2)).astype(np.float32)


@dataclass
class BrainSubject:
    """One subject: the four contrasts (float32, scanner units), labels and tumour masks."""

    seed: int
    images: dict[str, np.ndarray]  # contrast -> (N, H, W)
    labels: np.ndarray  # (N, H, W) int16 tissue index (NAMES) at pixel centres
    tumour_fraction: np.ndarray  # (N, H, W) rim + necrosis
    oedema_fraction: np.ndarray
    z_mm: np.ndarray
    pixel_spacing_mm: float
    slice_spacing_mm: float
    info: dict = field(default_factory=dict)


def _E(name: str, *args: float, **kw) -> Ellipsoid:
    return Ellipsoid(L[name], *args, **kw)


def _anatomy(rng: np.random.Generator) -> tuple[list[Ellipsoid], dict]:
    u = rng.uniform
    ah, bh = u(66, 76), u(84, 96)
    head = random_wobble(rng, 0.03)
    gyri = random_wobble(rng, 0.07, 9)
    s: list[Ellipsoid] = [
        _E("scalp", 0, 0, 20, ah, bh, 110, wobble=head),
        _E("bone", 0, 0, 20, ah - u(3, 5), bh - u(3, 5), 106, wobble=head),
        _E("marrow", 0, 0, 20, ah - 6, bh - 6, 104, wobble=head),
        _E("bone", 0, 0, 20, ah - 7.5, bh - 7.5, 103, wobble=head),
        _E("dura", 0, 0, 20, ah - 8.5, bh - 8.5, 102),
        _E("csf", 0, 0, 20, ah - 9.5, bh - 9.5, 101),
        _E("gm", 0, 0, 18, ah - 12, bh - 12, 95, wobble=gyri),
        _E("wm", 0, 0, 22, ah - u(19, 23), bh - u(19, 23), 80, wobble=random_wobble(rng, 0.1, 9)),
        _E("csf", 0, 0, 30, 1.3, bh - 12, 90),  # interhemispheric fissure
        _E("sinus", 0, bh - 11, 30, 3.2, 3.2, 90, prism=True),
    ]
    for side in (-1, 1):
        s += [_E("muscle", side * (ah - 4), -bh * 0.2, -40, 6, 28, 45),  # temporalis
              _E("deep_gm", side * u(13, 18), u(-4, 6), u(0, 10), u(7, 10), u(10, 14), u(14, 20)),
              _E("csf", side * u(6, 9), -u(8, 14), u(15, 25), u(4, 7), u(18, 24), u(22, 30),
                 angle=side * 0.25),  # lateral ventricle bodies / frontal horns
              _E("choroid", side * u(8, 11), u(4, 10), u(12, 20), 3, 5, 8)]
    info: dict = {"tumour": False}
    if rng.random() < 0.85:
        side = rng.choice([-1, 1])
        r = u(9, 20)
        tx, ty, tz = side * u(18, ah - 32), u(-bh * 0.45, bh * 0.45), u(0, 45)
        w = random_wobble(rng, 0.15)
        s += [_E("oedema", tx, ty, tz, r * u(1.6, 2.1), r * u(1.5, 2.0), r * 1.7, wobble=random_wobble(rng, 0.2)),
              _E("rim", tx, ty, tz, r, r * u(0.8, 1.0), r * 0.9, wobble=w)]
        if rng.random() < 0.75:
            s.append(_E("necrosis", tx, ty, tz, r * u(0.45, 0.65), r * u(0.4, 0.6), r * 0.5, wobble=w))
        info.update(tumour=True, centre_mm=[float(tx), float(ty), float(tz)], radius_mm=float(r))
    return s, info


def generate_subject(seed: int, n_slices: int = 16, size: int = 128,
                     z_range: tuple[float, float] = (-10.0, 60.0)) -> BrainSubject:
    """Render one subject's four contrasts over an axial band through the ventricles."""
    rng = np.random.default_rng([seed, 2])
    shapes, info = _anatomy(rng)
    params = np.array(list(TISSUES.values()), np.float64)
    params[:, 0] *= rng.uniform(0.96, 1.04, len(params))  # per-subject PD / T1 / T2 spread
    params[:, 1] *= rng.uniform(0.94, 1.06, len(params))
    params[:, 2] *= rng.uniform(0.94, 1.06, len(params))
    tables = {c: signal_table(c, params) for c in CONTRASTS}
    fov = rng.uniform(220, 240)
    lo, hi = z_range
    z = np.linspace(lo, hi, n_slices).astype(np.float32) if n_slices > 1 else np.array([(lo + hi) / 2], np.float32)
    bias = smooth_field(rng, size, 0.1)
    gain = {c: rng.uniform(0.8, 1.25) * 4000.0 / float(tables[c][L["wm"]] + tables[c][L["gm"]]) for c in CONTRASTS}
    sigma = {c: rng.uniform(0.008, 0.02) for c in CONTRASTS}
    imgs: dict[str, list[np.ndarray]] = {c: [] for c in CONTRASTS}
    labels, tumour, oedema = [], [], []
    for k, zk in enumerate(z):
        cv = Canvas(size, fov)
        cv.draw_all(shapes, float(zk))
        nrng = np.random.default_rng([seed, 2, 7, k])
        for c in CONTRASTS:
            img = gaussian_blur(cv.render(tables[c]) * bias, 0.5)
            ref = float(tables[c][L["wm"]] + tables[c][L["gm"]]) / 2
            n1, n2 = nrng.normal(0, sigma[c] * ref, (2, size, size)).astype(np.float32)
            imgs[c].append(np.sqrt((img + n1) ** 2 + n2**2) * gain[c])
        labels.append(cv.majority())
        tumour.append(cv.fraction([L["rim"], L["necrosis"]]))
        oedema.append(cv.fraction([L["oedema"]]))
    info.update(fov_mm=float(fov), split=split_of(seed))
    return BrainSubject(seed=seed, images={c: np.stack(v).astype(np.float32) for c, v in imgs.items()},
                        labels=np.stack(labels), tumour_fraction=np.stack(tumour),
                        oedema_fraction=np.stack(oedema), z_mm=z, pixel_spacing_mm=fov / size,
                        slice_spacing_mm=float(z[1] - z[0]) if n_slices > 1 else 5.0, info=info)
