"""Seeded CT and T2-weighted MRI of one anatomy: head-and-neck and abdomen/pelvis.

Seed 004 trains its CycleGAN on *unpaired* CT and MRI of different patients and cannot
measure pixel accuracy; a phantom that renders the same tissue-label anatomy both ways
gives every evaluation a registered truth (and organ masks in the CT's frame), while
training still draws CT and MRI from disjoint subjects (see `models.ct.train`).

Tissues carry a Hounsfield value and a T2-weighted (TSE, no fat suppression) signal. The
contrasts disagree the way they do in patients: fat is dark on CT and bright on T2; urine,
CSF and vitreous are near water on CT and brightest on T2; liver, spleen, kidney, prostate,
rectal wall, grey matter and blood are all 30-60 HU on CT but differ on T2 (flowing blood
is a flow void). That soft-tissue contrast is why seed 004 wants a pseudo-MRI.

CT: partial volume, per-subject HU jitter, correlated quantum noise (4-10 HU). MRI:
partial volume, coil bias (±8 %), slight blur, Rician noise. Pure numpy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from models.common.draw import Canvas, Ellipsoid, gaussian_blur, random_wobble, smooth_field
from models.common.split import SeedSplits

REGIONS = ("abdomen", "head_neck")
SPLITS = SeedSplits({"train": 41_000, "val": 42_000, "test": 43_000})
SPLIT_BASE = SPLITS.base
MR_SCALE = 2000.0  # stored MR units per unit T2 signal (DICOM writer, demo)

# name: (HU, T2-weighted signal on [0, ~1])
TISSUES: dict[str, tuple[float, float]] = {
    "air": (-1000.0, 0.0),
    "fat": (-100.0, 0.85),
    "muscle": (50.0, 0.22),
    "bone": (1100.0, 0.03),
    "marrow": (250.0, 0.62),
    "liver": (60.0, 0.30),
    "spleen": (48.0, 0.55),
    "kidney": (32.0, 0.64),
    "urine": (8.0, 1.0),
    "rectum": (40.0, 0.40),
    "bowel": (25.0, 0.48),
    "blood": (42.0, 0.05),
    "csf": (8.0, 1.0),
    "cord": (35.0, 0.45),
    "prostate": (40.0, 0.70),
    "gm": (40.0, 0.56),
    "wm": (28.0, 0.40),
    "vitreous": (10.0, 0.98),
    "lens": (95.0, 0.12),
    "nerve": (35.0, 0.42),
    "parotid": (-20.0, 0.72),
    "thyroid": (100.0, 0.38),
    "teeth": (2200.0, 0.0),
}
NAMES = tuple(TISSUES)
L = {name: i for i, name in enumerate(NAMES)}

# Organs scored for structure preservation (Dice of CT anatomy vs the pseudo-MRI).
ORGANS: dict[str, dict[str, tuple[str, ...]]] = {
    "abdomen": {"liver": ("liver",), "spleen": ("spleen",), "kidneys": ("kidney",),
                "bladder": ("urine",), "prostate": ("prostate",)},
    "head_neck": {"eyes": ("vitreous", "lens"), "brain": ("gm", "wm"), "parotids": ("parotid",),
                  "thyroid": ("thyroid",)},
}
Z_EXTENT = {"abdomen": (0.0, 330.0), "head_neck": (0.0, 250.0)}


split_of = SPLITS.split_of
split_seeds = SPLITS.seeds


@dataclass
class CTSubject:
    """One subject's CT (HU) and T2 MRI (unit signal) of the same anatomy, with labels."""

    seed: int
    region: str
    ct: np.ndarray  # (N, H, W) float32, Hounsfield units
    mr: np.ndarray  # (N, H, W) float32, T2 signal (0..~1.1)
    labels: np.ndarray  # (N, H, W) int16, tissue index (NAMES) at each pixel centre
    organ_fraction: dict[str, np.ndarray]  # organ -> (N, H, W) partial-volume fraction
    z_mm: np.ndarray
    pixel_spacing_mm: float
    slice_spacing_mm: float
    info: dict = field(default_factory=dict)

    def organ_masks(self) -> dict[str, np.ndarray]:
        """Organ -> bool (N, H, W): pixels at least half inside the organ."""
        return {k: v >= 0.5 for k, v in self.organ_fraction.items()}


def _E(name: str, *args: float, **kw) -> Ellipsoid:
    return Ellipsoid(L[name], *args, **kw)


def _abdomen(rng: np.random.Generator) -> tuple[list[Ellipsoid], float]:
    u = rng.uniform
    a, b = u(140, 172), u(95, 122)
    ft = u(10, 28)
    wob = random_wobble(rng, 0.05)
    mid, h = 165.0, 400.0
    s: list[Ellipsoid] = [
        _E("fat", 0, 0, mid, a, b, h, wobble=wob, prism=True),
        _E("muscle", 0, 2, mid, a - ft, b - 0.8 * ft, h, wobble=wob, prism=True),
        _E("fat", 0, 0, mid, a - ft - 11, b - 0.8 * ft - 9, h, wobble=wob, prism=True),
    ]
    ys = b * 0.42  # vertebral body centre
    for side in (-1, 1):  # paraspinal muscles
        s.append(_E("muscle", side * 36, ys + 28, mid, u(24, 30), u(18, 24), h, prism=True))
    s += [
        _E("bone", 0, ys + 24, mid, 15, 13, h, prism=True),  # neural arch
        _E("bone", 0, ys + 40, mid, 4, 12, h, prism=True),  # spinous process
        _E("bone", 0, ys, mid, u(18, 21), u(15, 18), h, prism=True),
        _E("marrow", 0, ys, mid, 14, 11.5, h, prism=True),
        _E("csf", 0, ys + 24, mid, 8, 7, h, prism=True),
        _E("cord", 0, ys + 24, 300, 4, 3.5, 60, prism=True),  # conus at ~L1
    ]
    for side in (-1, 1):  # psoas
        s.append(_E("muscle", side * u(28, 34), ys - 4, 170, u(14, 18), u(13, 16), 110))
    # organs of the upper abdomen
    s += [
        _E("liver", -a * u(0.30, 0.38), -b * u(0.0, 0.1), u(265, 285), a * u(0.50, 0.58),
           b * u(0.70, 0.80), u(62, 75), angle=u(0.1, 0.3), wobble=random_wobble(rng, 0.06)),
        _E("spleen", a * u(0.50, 0.58), b * u(0.20, 0.30), u(260, 280), u(26, 32), u(42, 50),
           u(45, 55), angle=-u(0.3, 0.6), wobble=random_wobble(rng, 0.05)),
        _E("bowel", a * u(0.15, 0.3), -b * u(0.25, 0.4), u(275, 295), u(35, 45), u(25, 32), u(30, 40)),
        _E("air", a * u(0.15, 0.3), -b * u(0.45, 0.55), u(280, 295), u(14, 22), u(6, 9), u(15, 22)),
    ]
    for side in (-1, 1):
        kx, ky, kz = side * a * u(0.36, 0.42), b * u(0.22, 0.30), u(190, 210)
        ang = side * u(0.2, 0.4)
        s.append(_E("kidney", kx, ky, kz, u(23, 27), u(30, 36), u(50, 58), angle=ang,
                    wobble=random_wobble(rng, 0.03)))
        s.append(_E("fat", kx - side * 6, ky - 2, kz, u(6, 9), u(10, 13), u(25, 32), angle=ang))
    for _ in range(int(rng.integers(12, 20))):  # small bowel / colon loops, some with gas
        bx, by, bz = u(-a * 0.5, a * 0.5), u(-b * 0.6, b * 0.1), u(80, 240)
        r1, r2 = u(12, 22), u(10, 18)
        s.append(_E("bowel", bx, by, bz, r1, r2, u(20, 50), angle=u(0, np.pi),
                    wobble=random_wobble(rng, 0.05)))
        if rng.random() < 0.5:
            s.append(_E("air", bx, by - r2 * 0.3, bz, r1 * 0.45, r2 * 0.35, u(10, 20)))
    # great vessels: flow voids on T2, ~40 HU on a non-contrast CT
    s += [
        _E("blood", u(6, 12), ys - u(26, 32), 235, u(10, 12), u(10, 12), 110, prism=True),
        _E("blood", -u(20, 25), ys - u(24, 30), 235, u(11, 13), u(10, 12), 110, prism=True),
    ]
    for side in (-1, 1):
        s.append(_E("blood", side * u(22, 30), ys - 20, 85, 7, 7, 40, prism=True))
    # pelvis
    for side in (-1, 1):
        ix = side * a * u(0.52, 0.6)
        s += [_E("bone", ix, b * 0.25, u(100, 110), u(14, 17), u(34, 40), u(28, 34), angle=-side * 0.6),
              _E("marrow", ix, b * 0.25, 105, 10, 28, 24, angle=-side * 0.6)]
        fx = side * a * u(0.46, 0.52)
        s += [_E("muscle", side * a * u(0.45, 0.52), b * 0.55, 60, u(40, 48), u(26, 32), 70),  # gluteal
              _E("bone", fx, b * 0.05, u(32, 38), u(24, 27), u(24, 27), 26),
              _E("marrow", fx, b * 0.05, 35, 20, 20, 22),
              _E("muscle", side * a * u(0.34, 0.4), -b * 0.05, 40, 11, 24, 34)]  # obturator
    s += [
        _E("urine", 0, -b * u(0.22, 0.32), u(50, 60), u(36, 46), u(28, 36), u(30, 38),
           wobble=random_wobble(rng, 0.05)),
        _E("prostate", 0, b * u(0.0, 0.06), u(20, 28), u(16, 20), u(13, 16), u(15, 20)),
        _E("rectum", 0, b * u(0.26, 0.34), 60, u(16, 19), u(14, 17), 60, wobble=random_wobble(rng, 0.04)),
        _E("bowel", 0, b * 0.3, 60, u(6, 9), u(5, 8), 52),
    ]
    if rng.random() < 0.6:
        s.append(_E("air", 0, b * 0.3, u(60, 90), 5, 4, 15))
    return s, 2 * a + u(40, 80)


def _head_neck(rng: np.random.Generator) -> tuple[list[Ellipsoid], float]:
    u = rng.uniform
    ah, bh = u(70, 78), u(88, 98)
    an, bn = u(55, 64), u(50, 58)
    gyri = random_wobble(rng, 0.08, 7)
    s: list[Ellipsoid] = [
        _E("fat", 0, 8, 62, an, bn, 62, prism=True, wobble=random_wobble(rng, 0.04)),
        _E("fat", 0, -6, 112, u(60, 66), u(78, 86), 42),
        _E("fat", 0, 0, 165, ah, bh, 95, wobble=random_wobble(rng, 0.03)),
        _E("muscle", 0, 14, 60, an - 9, bn - 11, 60, prism=True),
        _E("muscle", 0, -4, 112, u(50, 55), u(66, 72), 36),
        # skull, diploe, inner table, CSF, cortex, white matter, ventricles
        _E("bone", 0, 0, 178, ah - 3, bh - 3, 76),
        _E("marrow", 0, 0, 178, ah - 5, bh - 5, 74),
        _E("bone", 0, 0, 178, ah - 6.5, bh - 6.5, 73),
        _E("csf", 0, 0, 180, ah - 8, bh - 8, 68),
        _E("gm", 0, 0, 183, ah - 10.5, bh - 10.5, 63, wobble=gyri),
        _E("wm", 0, 0, 188, ah - 19, bh - 19, 48, wobble=gyri),
        _E("csf", 0, 0, 190, 1.2, bh - 12, 55),  # interhemispheric fissure
    ]
    for side in (-1, 1):
        s.append(_E("csf", side * u(6, 9), -u(4, 10), 190, u(4, 6), u(16, 22), u(16, 22), angle=side * 0.3))
    ye = -0.74 * bh
    for side in (-1, 1):
        ex = side * u(29, 33)
        s += [
            _E("fat", ex, ye + 4, 150, 17, 21, 16),  # orbital fat
            _E("vitreous", ex, ye, 150, 11.5, 11.5, 11.5),
            _E("lens", ex, ye - 9, 150, 4.5, 2.0, 4.5),
        ]
        nx, ny = ex * 0.65, ye + 24
        ang = float(np.arctan2(24.0, -side * 0.35 * abs(ex)))
        s.append(_E("nerve", nx, ny, 150, 14, 2.3, 2.5, angle=ang))
    for side in (-1, 1):  # maxillary sinuses with bony walls, parotids, rami, masseters
        s += [_E("bone", side * 25, -0.58 * bh, 125, 17, 19, 19),
              _E("air", side * 25, -0.58 * bh, 125, 14, 16, 16),
              _E("parotid", side * u(43, 48), 10, 110, u(12, 15), u(18, 22), 22),
              _E("bone", side * 44, 0, 105, 6, 18, 25),
              _E("muscle", side * 41, -16, 105, 7, 16, 20)]
    s += [
        _E("air", 0, -0.72 * bh, 125, 6, 18, 22),  # nasal cavity
        _E("bone", 0, -26, 100, 47, 50, 14, keep="anterior"),  # mandible
        _E("teeth", 0, -26, 108, 44, 47, 4, keep="anterior"),
        _E("muscle", 0, -22, 100, 37, 40, 16, keep="anterior"),  # tongue / floor of mouth
        _E("air", 0, 4, 100, 10, 7, 28),  # oropharynx
        _E("air", 0, -18, 30, 9, 8, 40, prism=True),  # larynx / trachea
        _E("bone", 0, 24, 62, 14, 12, 62, prism=True),  # cervical vertebrae
        _E("marrow", 0, 24, 62, 11, 9, 62, prism=True),
        _E("bone", 0, 41, 62, 11, 9, 62, prism=True),
        _E("csf", 0, 42, 62, 7, 6, 62, prism=True),
        _E("cord", 0, 42, 62, 4, 3.5, 62, prism=True),
    ]
    for side in (-1, 1):
        s += [_E("thyroid", side * 16, -16, 25, 9, 7, 20),
              _E("blood", side * 23, 0, 60, 5, 5, 60, prism=True),
              _E("blood", side * 31, 4, 60, 6, 6, 60, prism=True),
              _E("muscle", side * 42, -4, 50, 8, 14, 48)]
    return s, u(230, 260)


def _tables(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    hu = np.array([v[0] for v in TISSUES.values()], np.float32)
    t2 = np.array([v[1] for v in TISSUES.values()], np.float32)
    soft = np.abs(hu) < 300
    hu = hu + np.where(soft, rng.normal(0, 4, hu.shape), rng.normal(0, 60, hu.shape)).astype(np.float32)
    hu[L["air"]] = -1000.0
    t2 = t2 * rng.uniform(0.93, 1.07, t2.shape).astype(np.float32)
    t2[L["air"]] = 0.0
    return hu, t2


def generate_subject(seed: int, region: str = "abdomen", n_slices: int = 24, size: int = 128,
                     z_range: tuple[float, float] | None = None) -> CTSubject:
    """Render one subject's CT and MRI; slices spread evenly over the region (or z_range)."""
    if region not in REGIONS:
        raise ValueError(f"region must be one of {REGIONS}, got {region!r}")
    rng = np.random.default_rng([seed, REGIONS.index(region)])
    shapes, fov = (_abdomen if region == "abdomen" else _head_neck)(rng)
    hu, t2 = _tables(rng)
    lo, hi = z_range if z_range is not None else (Z_EXTENT[region][0] + 10, Z_EXTENT[region][1] - 10)
    z = np.linspace(lo, hi, n_slices).astype(np.float32) if n_slices > 1 else np.array([(lo + hi) / 2], np.float32)
    ct_sigma = rng.uniform(4, 10)  # quantum noise at 2-3 mm pixels, soft kernel
    mr_sigma = rng.uniform(0.01, 0.025)
    bias = smooth_field(rng, size, 0.08)
    cts, mrs, labs = [], [], []
    organs = {k: [] for k in ORGANS[region]}
    for k, zk in enumerate(z):
        cv = Canvas(size, fov)
        cv.draw_all(shapes, float(zk))
        nrng = np.random.default_rng([seed, REGIONS.index(region), 7, k])
        ct = cv.render(hu)
        noise = gaussian_blur(nrng.normal(0, 1, ct.shape).astype(np.float32), 0.7)
        cts.append(ct + ct_sigma * noise / max(float(noise.std()), 1e-6))
        mr = gaussian_blur(cv.render(t2) * bias, 0.5)
        n1, n2 = nrng.normal(0, mr_sigma, (2, *mr.shape)).astype(np.float32)
        mrs.append(np.sqrt((mr + n1) ** 2 + n2**2))
        labs.append(cv.majority())
        for name, tissues in ORGANS[region].items():
            organs[name].append(cv.fraction([L[t] for t in tissues]))
    spacing = float(z[1] - z[0]) if n_slices > 1 else 5.0
    return CTSubject(seed=seed, region=region, ct=np.stack(cts).astype(np.float32),
                     mr=np.stack(mrs).astype(np.float32), labels=np.stack(labs),
                     organ_fraction={k: np.stack(v) for k, v in organs.items()}, z_mm=z,
                     pixel_spacing_mm=fov / size, slice_spacing_mm=spacing,
                     info={"fov_mm": fov, "ct_noise_hu": float(ct_sigma), "mr_noise": float(mr_sigma),
                           "split": split_of(seed)})
