"""Phantom series of every class the series classifier knows, each with its true look.

Issue 4 asks that each class look the way it does on a scanner: T2 with bright fluid, fat
suppression, DWI signal decaying with b (lesions stay bright at high b), ADC maps (cysts
bright, lesions dark), enhancement of vessels, heart and lesions over DCE phases (blood
brightest early, parenchyma catching up late), subtraction, brain T1/T2/T1c/FLAIR, CT in
Hounsfield units by region, and out-of-scope anatomy (knee, spine, abdomen MR, phantoms)
for `unknown`. Anatomy is drawn at twice the output resolution as a tissue map, then
area-averaged (partial volume), with per-subject signal jitter, texture, coil bias and
Rician noise. The DCE helper's physics phantom (`models.dce.phantom`) supplies part of the
non-fat-suppressed T1 and early post-contrast breast series, and the brain and CT
helpers' phantoms part of the brain and CT series, so every model agrees on the series
the demos send.

Each series also gets vendor-styled headers (Siemens, GE, Philips), degraded the way real
archives are (missing descriptions and body parts, absent contrast and timing fields, a
few wrong descriptions) so the header rules are evaluated honestly.

Splits are by seed: train 100000+, val 200000+, test 300000+ (the DCE phantom's own
1000/2000/3000 splits are used for the subjects borrowed from it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from pydicom import Dataset
from scipy import ndimage

from dicom_synth.classify.labels import LABELS
from models.classifier.headers import make_headers

SPLIT_BASE = {"train": 100_000, "val": 200_000, "test": 300_000}


@dataclass
class PhantomSeries:
    label: str
    volume: np.ndarray  # (N, H, W) float32, modality units
    headers: list[Dataset]
    seed: int
    info: dict = field(default_factory=dict)


# ------------------------------------------------------------------ drawing helpers
class Canvas:
    """A tissue map at 2x resolution in millimetre coordinates (x right, y down)."""

    def __init__(self, size: int, fov_mm: float):
        self.size, self.fov = size, fov_mm
        n = 2 * size
        c = (np.arange(n, dtype=np.float32) - (n - 1) / 2) * fov_mm / n
        self.x, self.y = c[None, :], c[:, None]
        self.tissue = np.zeros((n, n), np.int16)  # 0 = air / background

    def _box(self, cx: float, cy: float, radius: float) -> tuple[slice, slice]:
        n = self.tissue.shape[0]
        step = self.fov / n
        c0 = int(np.clip((cx - radius) / step + n / 2 - 1, 0, n))
        c1 = int(np.clip((cx + radius) / step + n / 2 + 2, 0, n))
        r0 = int(np.clip((cy - radius) / step + n / 2 - 1, 0, n))
        r1 = int(np.clip((cy + radius) / step + n / 2 + 2, 0, n))
        return slice(r0, r1), slice(c0, c1)

    def ellipse(self, tissue: int, cx: float, cy: float, rx: float, ry: float,
                angle: float = 0.0, wobble: np.ndarray | tuple | None = None) -> None:
        """Paint an ellipse; `wobble` is a full-canvas field or (amplitude, sigma_px, rng)
        for an irregular outline made only inside the ellipse's box."""
        rows, cols = self._box(cx, cy, 1.5 * max(rx, ry))
        ca, sa = np.cos(angle), np.sin(angle)
        dx, dy = self.x[:, cols] - cx, self.y[rows, :] - cy
        u, v = (dx * ca + dy * sa) / rx, (-dx * sa + dy * ca) / ry
        r = u * u + v * v
        if isinstance(wobble, tuple):
            amp, sigma, rng = wobble
            if r.size:
                r = r + amp * smooth_field(rng, r.shape, sigma)
        elif wobble is not None:
            r = r + wobble[rows, cols]
        self.tissue[rows, cols][r <= 1.0] = tissue

    def ring(self, tissue: int, cx: float, cy: float, rx: float, ry: float, width: float) -> None:
        outer = ((self.x - cx) / rx) ** 2 + ((self.y - cy) / ry) ** 2 <= 1.0
        inner = ((self.x - cx) / max(rx - width, 1)) ** 2 + ((self.y - cy) / max(ry - width, 1)) ** 2 <= 1.0
        self.tissue[outer & ~inner] = tissue

    def rect(self, tissue: int, x0: float, y0: float, x1: float, y1: float) -> None:
        self.tissue[(self.x >= x0) & (self.x <= x1) & (self.y >= y0) & (self.y <= y1)] = tissue

    def render(self, signal: dict[int, float], rng: np.random.Generator,
               texture: float = 0.06, background: float = 0.0) -> np.ndarray:
        """Signal image at output resolution: per-tissue signal with texture, area-averaged."""
        lut = np.full(int(self.tissue.max()) + 1, background, np.float32)
        for t, s in signal.items():
            if t < len(lut):
                lut[t] = s
        n = self.size
        img = lut[self.tissue].reshape(n, 2, n, 2).mean(axis=(1, 3))
        if texture:
            inside = self.tissue[::2, ::2] > 0
            img = img * (1 + texture * smooth_field(rng, img.shape, 1.5) * inside)
        return img


def _lerp(a: np.ndarray, n: int, axis: int) -> np.ndarray:
    """Linear resampling of one axis to n samples."""
    pos = np.linspace(0, a.shape[axis] - 1, n, dtype=np.float32)
    i0 = np.minimum(pos.astype(int), a.shape[axis] - 2)
    w = pos - i0
    shape = [1, 1]
    shape[axis] = n
    w = w.reshape(shape)
    return np.take(a, i0, axis=axis) * (1 - w) + np.take(a, i0 + 1, axis=axis) * w


def smooth_field(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Zero-mean unit-variance random field with correlation length ~sigma pixels, made on a
    coarse grid and upsampled (fast)."""
    cell = max(sigma / 1.5, 1.0)
    coarse_shape = (int(np.ceil(shape[0] / cell)) + 2, int(np.ceil(shape[1] / cell)) + 2)
    coarse = ndimage.gaussian_filter(rng.standard_normal(coarse_shape).astype(np.float32), 1.0)
    f = _lerp(_lerp(coarse, shape[0], 0), shape[1], 1)
    f -= f.mean()
    return f / (f.std() + 1e-6)


def mr_finish(img: np.ndarray, rng: np.random.Generator, noise: float, scale: float,
              blur: float = 0.0, bias: float = 0.15) -> np.ndarray:
    """Coil bias, optional blur (EPI), Rician noise, scanner scaling."""
    h, w = img.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    gx, gy = rng.uniform(-1, 1, 2)
    field_ = 1 + bias * (gx * (xx / w - 0.5) + gy * (yy / h - 0.5)) * 2
    img = img * field_
    if blur:
        img = ndimage.gaussian_filter(img, blur)
    re = img + rng.normal(0, noise, img.shape)
    im = rng.normal(0, noise, img.shape)
    return (np.sqrt(re * re + im * im) * scale).astype(np.float32)


def by_tissue(tissues: tuple[int, ...], rows: dict[str, tuple[float, ...]]) -> dict[str, dict[int, float]]:
    """{kind: {tissue: value}} from a table: a row of values per kind, a column per tissue."""
    return {kind: dict(zip(tissues, values, strict=True)) for kind, values in rows.items()}


def jitter(rng: np.random.Generator, table: dict[int, float], amount: float = 0.12) -> dict[int, float]:
    return {k: max(v * float(rng.uniform(1 - amount, 1 + amount)), 0.0) for k, v in table.items()}


# ------------------------------------------------------------------ breast MR
# tissues
AIR, FAT, FGT, MUSCLE, LESION, CYST, BLOOD, VESSEL, LUNG, SKIN, BONE, LIVER = range(12)

# Relative signal of each tissue per breast series kind (before jitter), a column per tissue.
BREAST_TISSUES = (FAT, FGT, MUSCLE, LESION, CYST, BLOOD, VESSEL, LUNG, SKIN, BONE, LIVER)
BREAST_SIGNAL: dict[str, dict[int, float]] = by_tissue(BREAST_TISSUES, {
    "t1_nc":   (1.0, 0.35, 0.3, 0.33, 0.12, 0.22, 0.22, 0.03, 0.45, 0.8, 0.35),
    "t2":      (0.8, 0.33, 0.13, 0.45, 1.0, 0.08, 0.1, 0.03, 0.35, 0.6, 0.2),
    "t2_fs":   (0.09, 0.38, 0.18, 0.55, 1.0, 0.12, 0.15, 0.03, 0.35, 0.1, 0.25),
    "dce_pre": (0.1, 0.3, 0.28, 0.3, 0.1, 0.22, 0.22, 0.02, 0.3, 0.1, 0.3),
})
ADC = dict(zip(BREAST_TISSUES, (0.15e-3, 1.9e-3, 1.45e-3, 0.95e-3, 2.9e-3, 2.5e-3, 2.5e-3, 0.0, 1.2e-3, 0.3e-3,
                                1.2e-3), strict=True))
T2W_DWI = dict(zip(BREAST_TISSUES, (0.08, 0.5, 0.22, 0.7, 1.0, 0.05, 0.05, 0.02, 0.3, 0.05, 0.25), strict=True))


def _breast_anatomy(rng: np.random.Generator, size: int, fov: float, z: float) -> tuple[Canvas, dict]:
    """Prone axial slice: breasts hang anteriorly (top of the image), heart behind."""
    cv = Canvas(size, fov)
    a, b = rng.uniform(145, 175), rng.uniform(95, 120)
    cy = rng.uniform(40, 70)
    cv.ellipse(SKIN, 0, cy, a, b)
    cv.ellipse(FAT, 0, cy, a - 2, b - 2)
    cv.ellipse(MUSCLE, 0, cy, a - rng.uniform(8, 18), b - rng.uniform(8, 18))
    cv.ellipse(FAT, 0, cy + 5, a - 30, b - 28)  # mediastinal and paravertebral fat
    for side in (-1, 1):
        cv.ellipse(LUNG, side * rng.uniform(55, 75), cy + 5, rng.uniform(45, 60), rng.uniform(55, 75))
    cv.ellipse(BLOOD, rng.uniform(-15, 15), cy - rng.uniform(5, 20), rng.uniform(35, 50), rng.uniform(28, 40))
    cv.ellipse(VESSEL, rng.uniform(-20, -5), cy + rng.uniform(25, 40), 10, 10)  # aorta
    cv.ellipse(BONE, 0, cy + b - rng.uniform(25, 35), 14, 12)  # vertebral body
    shrink = np.sqrt(max(1 - (z / 90.0) ** 2, 0.15))
    info = {"lesions": 0, "cysts": 0}
    for side in (-1, 1):
        bx = side * rng.uniform(80, 100)
        rx, ry = rng.uniform(55, 75) * shrink, rng.uniform(55, 85) * shrink
        by = cy - b + 10 - ry * 0.8
        rows, cols = cv._box(bx, by, 1.5 * max(rx, ry) + 3)
        wob = np.zeros(cv.tissue.shape, np.float32)
        if cv.tissue[rows, cols].size:
            wob[rows, cols] = 0.15 * smooth_field(rng, cv.tissue[rows, cols].shape, 12)
        cv.ellipse(SKIN, bx, by, rx + 2, ry + 2, wobble=wob)
        cv.ellipse(FAT, bx, by, rx, ry, wobble=wob)
        density = rng.uniform(0.1, 0.75)
        region = cv.tissue[rows, cols]
        if region.size:
            glands = smooth_field(rng, region.shape, rng.uniform(3, 7))
            inner = (((cv.x[:, cols] - bx) / (rx * 0.75)) ** 2 + ((cv.y[rows, :] - by) / (ry * 0.75)) ** 2) <= 1
            thresh = np.quantile(glands[inner], 1 - density) if inner.any() else 9
            region[inner & (glands > thresh)] = FGT
        for _ in range(rng.integers(1, 5)):  # vessels in the breast
            ang = rng.uniform(0, 2 * np.pi)
            rr = rng.uniform(0.2, 0.8)
            cv.ellipse(VESSEL, bx + rr * rx * np.cos(ang), by + rr * ry * np.sin(ang),
                       rng.uniform(1.5, 3), rng.uniform(1.5, 3))
        if rng.random() < 0.6:
            info["lesions"] += 1
            ang, rr = rng.uniform(0, 2 * np.pi), rng.uniform(0, 0.6)
            cv.ellipse(LESION, bx + rr * rx * np.cos(ang), by + rr * ry * np.sin(ang),
                       rng.uniform(4, 12), rng.uniform(4, 12), angle=rng.uniform(0, np.pi),
                       wobble=(0.3, 3, rng))
        if rng.random() < 0.4:
            info["cysts"] += 1
            ang, rr = rng.uniform(0, 2 * np.pi), rng.uniform(0, 0.6)
            cv.ellipse(CYST, bx + rr * rx * np.cos(ang), by + rr * ry * np.sin(ang),
                       rng.uniform(3, 9), rng.uniform(3, 9))
    return cv, info


def _dce_signal(rng: np.random.Generator, phase: str, kin: dict) -> dict[int, float]:
    pre = dict(BREAST_SIGNAL["dce_pre"])
    if phase == "pre":
        return pre
    e = kin[phase]
    out = dict(pre)
    out[BLOOD] = pre[BLOOD] + e["blood"]
    out[VESSEL] = pre[VESSEL] + e["blood"] * 0.95
    out[LESION] = pre[LESION] + e["lesion"]
    out[FGT] = pre[FGT] + e["fgt"]
    out[MUSCLE] = pre[MUSCLE] + e["muscle"]
    out[SKIN] = pre[SKIN] + e["muscle"]
    out[LIVER] = pre[LIVER] + e["muscle"] * 1.5
    out[FAT] = pre[FAT] + 0.02
    return out


def _kinetics(rng: np.random.Generator) -> dict:
    """Enhancement above baseline, early (60-120 s) and late (5-8 min): blood peaks early,
    parenchyma and muscle keep rising, lesions wash in early (and may wash out)."""
    blood_early = rng.uniform(0.75, 1.0)
    lesion_early = rng.uniform(0.35, 0.7)
    curve = rng.choice(["persistent", "plateau", "washout"])
    lesion_late = lesion_early * {"persistent": rng.uniform(1.1, 1.3), "plateau": rng.uniform(0.95, 1.05),
                                  "washout": rng.uniform(0.7, 0.88)}[curve]
    fgt_early = rng.uniform(0.02, 0.15)
    return {
        "early": {"blood": blood_early, "lesion": lesion_early, "fgt": fgt_early,
                  "muscle": rng.uniform(0.08, 0.16)},
        "late": {"blood": blood_early * rng.uniform(0.35, 0.5), "lesion": lesion_late,
                 "fgt": fgt_early * rng.uniform(1.8, 3.0) + 0.05, "muscle": rng.uniform(0.18, 0.3)},
        "curve": str(curve),
    }


def breast_volume(kind: str, rng: np.random.Generator, n: int, size: int) -> tuple[np.ndarray, dict]:
    fov = rng.uniform(320, 400)
    z0 = rng.uniform(-30, 30)
    kin = _kinetics(rng)
    table_j = {k: float(rng.uniform(0.88, 1.12)) for k in range(12)}
    b_high = rng.uniform(700, 1000)
    noise = rng.uniform(0.01, 0.03)
    scale = rng.uniform(400, 2000)
    slices = []
    info: dict = {"kind": kind}
    for k in range(n):
        cv, anat = _breast_anatomy(np.random.default_rng([int(rng.integers(1 << 30)), k]), size, fov,
                                   z0 + (k - n / 2) * rng.uniform(2, 5))
        adc = {t: v * table_j[t] for t, v in ADC.items()}
        if kind in BREAST_SIGNAL:
            sig = {t: v * table_j[t] for t, v in BREAST_SIGNAL[kind].items()}
            img = mr_finish(cv.render(sig, rng), rng, noise, scale)
        elif kind in ("dce_early", "dce_late"):
            sig = {t: v * table_j[t] for t, v in _dce_signal(rng, kind[4:], kin).items()}
            img = mr_finish(cv.render(sig, rng), rng, noise, scale)
        elif kind == "sub":
            which = "early" if rng.random() < 0.6 else "late"
            post = cv.render({t: v * table_j[t] for t, v in _dce_signal(rng, which, kin).items()}, rng, texture=0.02)
            pre = cv.render({t: v * table_j[t] for t, v in BREAST_SIGNAL["dce_pre"].items()}, rng, texture=0.02)
            diff = post - pre + rng.normal(0, noise * 1.4, post.shape)
            img = (np.clip(diff, -0.2, None) * scale).astype(np.float32)
        elif kind in ("dwi_low_b", "dwi_high_b"):
            b = rng.choice([0, 50, 100]) if kind == "dwi_low_b" else b_high
            s0 = {t: v * table_j[t] for t, v in T2W_DWI.items()}
            sig = {t: s0[t] * float(np.exp(-b * adc[t])) for t in s0}
            img = cv.render(sig, rng, texture=0.04)
            shift = rng.uniform(-3, 3)
            img = ndimage.shift(img, (shift, 0), order=1)
            img = mr_finish(img, rng, noise * (1.0 if b < 200 else 0.6), scale, blur=rng.uniform(0.8, 1.6))
            info["b"] = float(b)
        elif kind == "adc":
            img = cv.render({t: v * 1e6 for t, v in adc.items()}, rng, texture=0.05)
            img = ndimage.gaussian_filter(img, rng.uniform(0.8, 1.5))
            s0 = cv.render(T2W_DWI, rng, texture=0)
            img = np.where(s0 > 0.06, img + rng.normal(0, 120, img.shape), rng.uniform(0, 1, img.shape) * 30)
            fat = ndimage.zoom((cv.tissue == FAT).astype(np.float32), 0.5, order=1) > 0.5
            img = np.where(fat, rng.uniform(0, 1500, img.shape), img)  # noisy fat in ADC maps
            img = np.clip(img, 0, 4000).astype(np.float32)
        else:
            raise ValueError(kind)
        slices.append(img)
        info.update(anat)
    info["curve"], info["fov"] = kin["curve"], fov
    return np.stack(slices).astype(np.float32), info


# ------------------------------------------------------------------ brain MR
WM, GM, CSF, SCALP, SKULL, TUMOR_RIM, NECROSIS, EDEMA, SINUS, DEEP_GM, DURA = range(1, 12)
BRAIN_SIGNAL = by_tissue((WM, GM, CSF, SCALP, SKULL, TUMOR_RIM, NECROSIS, EDEMA, SINUS, DEEP_GM, DURA), {
    "t1":    (0.78, 0.5, 0.1, 1.0, 0.05, 0.45, 0.2, 0.4, 0.3, 0.6, 0.3),
    "t1c":   (0.78, 0.5, 0.1, 1.0, 0.05, 1.0, 0.2, 0.4, 0.95, 0.6, 0.8),
    "t2":    (0.35, 0.52, 1.0, 0.6, 0.04, 0.6, 0.9, 0.8, 0.05, 0.42, 0.2),
    "flair": (0.42, 0.58, 0.06, 0.55, 0.04, 0.75, 0.3, 0.95, 0.05, 0.5, 0.2),
})


def _head(cv: Canvas, rng: np.random.Generator, z: float, *, ct: bool = False) -> dict:
    s = np.sqrt(max(1 - (z / 95.0) ** 2, 0.2))
    a, b = rng.uniform(68, 80) * s, rng.uniform(85, 98) * s
    wob = 0.04 * smooth_field(rng, cv.tissue.shape, 20)
    cv.ellipse(SCALP, 0, 0, a, b, wobble=wob)
    cv.ellipse(SKULL, 0, 0, a - rng.uniform(3, 6), b - rng.uniform(3, 6), wobble=wob)
    t = rng.uniform(5, 8)
    cv.ellipse(CSF, 0, 0, a - 4 - t, b - 4 - t, wobble=wob)
    gyri = 0.12 * smooth_field(rng, cv.tissue.shape, 4)
    cv.ellipse(GM, 0, 0, a - 7 - t, b - 7 - t, wobble=gyri)
    cv.ellipse(WM, 0, 0, a - 11 - t, b - 11 - t, wobble=gyri * 1.5)
    cv.rect(CSF, -0.8, -b, 0.8, b)  # interhemispheric fissure
    for side in (-1, 1):
        cv.ellipse(DEEP_GM, side * rng.uniform(12, 20), rng.uniform(-2, 8), rng.uniform(6, 10), rng.uniform(9, 13))
        cv.ellipse(CSF, side * rng.uniform(5, 9), rng.uniform(-15, -5), rng.uniform(3, 7) * s,
                   rng.uniform(12, 22) * s, angle=side * 0.3)
    for side in (-1, 1):  # choroid plexus in the ventricular trigones (enhances)
        cv.ellipse(DURA, side * rng.uniform(7, 11), rng.uniform(-2, 6), rng.uniform(2, 3.5), rng.uniform(2, 3.5))
    cv.ellipse(SINUS, 0, b - 6 - t * 0.5, 3.5, 3.5)  # superior sagittal sinus
    for _ in range(int(rng.integers(4, 9))):  # cortical veins in the sulci (enhance; flow voids on T2)
        ang = rng.uniform(0, 2 * np.pi)
        cv.ellipse(SINUS, (a - 6 - t) * np.cos(ang), (b - 6 - t) * np.sin(ang), 1.5, 1.5)
    cv.ring(DURA, 0, 0, a - 4 - t + 1.5, b - 4 - t + 1.5, 1.5)  # dura and falx (enhance)
    info = {"tumor": False}
    if rng.random() < 0.6:
        info["tumor"] = True
        cx, cy = rng.uniform(-a * 0.4, a * 0.4), rng.uniform(-b * 0.4, b * 0.4)
        r = rng.uniform(8, 20)
        cv.ellipse(EDEMA, cx, cy, r * 1.8, r * 1.6, wobble=(0.2, 5, rng))
        cv.ellipse(TUMOR_RIM, cx, cy, r, r * 0.9, wobble=(0.2, 5, rng))
        if rng.random() < 0.7:
            cv.ellipse(NECROSIS, cx, cy, r * 0.6, r * 0.5, wobble=(0.2, 5, rng))
    return info


def brain_volume(kind: str, rng: np.random.Generator, n: int, size: int) -> tuple[np.ndarray, dict]:
    fov = rng.uniform(220, 260)
    z0 = rng.uniform(-10, 30)
    table = jitter(rng, BRAIN_SIGNAL[kind], 0.08)
    noise, scale = rng.uniform(0.01, 0.03), rng.uniform(300, 3000)
    slices, info = [], {"kind": kind, "fov": fov}
    sub = int(rng.integers(1 << 30))
    for k in range(n):
        srng = np.random.default_rng([sub, k])
        cv = Canvas(size, fov)
        info.update(_head(cv, srng, z0 + (k - n / 2) * rng.uniform(3, 6)))
        slices.append(mr_finish(cv.render(table, rng), rng, noise, scale))
    return np.stack(slices), info


# ------------------------------------------------------------------ CT (Hounsfield units)
HU = {"air": -1000, "fat": -100, "muscle": 50, "brain_gm": 40, "brain_wm": 28, "csf": 6, "bone": 1200,
      "marrow": 300, "lung": -840, "blood": 42, "liver": 60, "spleen": 48, "kidney": 32, "bladder": 8,
      "bowel": 25, "thyroid": 95, "table": 200}


def _ct_render(cv: Canvas, names: list[str], rng: np.random.Generator, contrast: float) -> np.ndarray:
    values = {i + 1: HU[name] + rng.normal(0, 4) for i, name in enumerate(names)}
    for i, name in enumerate(names):
        if name in ("blood",):
            values[i + 1] += contrast
        if name in ("liver", "spleen", "kidney"):
            values[i + 1] += contrast * 0.4
    img = cv.render(values, rng, texture=0.0, background=-1000)
    img = img + rng.normal(0, rng.uniform(4, 18), img.shape)
    return img.astype(np.float32)


def ct_volume(kind: str, rng: np.random.Generator, n: int, size: int) -> tuple[np.ndarray, dict]:
    names = list(HU)
    t = {name: i + 1 for i, name in enumerate(names)}
    contrast = rng.choice([0.0, rng.uniform(100, 250)])
    info = {"kind": kind, "contrast_hu": float(contrast)}
    sub = int(rng.integers(1 << 30))
    region = kind
    if kind == "head_neck":
        region = "head" if rng.random() < 0.6 else "neck"
    fov = {"head": rng.uniform(200, 260), "neck": rng.uniform(200, 280), "chest": rng.uniform(340, 480),
           "abdomen_pelvis": rng.uniform(340, 480), "leg": rng.uniform(250, 450),
           "water": rng.uniform(200, 400)}[region]
    info["region"], info["fov"] = region, fov
    slices = []
    body = (rng.uniform(140, 190), rng.uniform(95, 130))
    for k in range(n):
        r = np.random.default_rng([sub, k])
        cv = Canvas(size, fov)
        cv.rect(t["table"], -fov / 2, fov * 0.42, fov / 2, fov * 0.45)
        if region == "head":
            a, b = r.uniform(68, 80), r.uniform(85, 98)
            cv.ellipse(t["muscle"], 0, 0, a, b)
            cv.ellipse(t["bone"], 0, 0, a - 3, b - 3)
            cv.ellipse(t["marrow"], 0, 0, a - 4.5, b - 4.5)
            cv.ellipse(t["bone"], 0, 0, a - 6, b - 6)
            cv.ellipse(t["csf"], 0, 0, a - 8, b - 8)
            cv.ellipse(t["brain_gm"], 0, 0, a - 10, b - 10, wobble=0.1 * smooth_field(r, cv.tissue.shape, 4))
            cv.ellipse(t["brain_wm"], 0, 0, a - 18, b - 18, wobble=0.15 * smooth_field(r, cv.tissue.shape, 4))
            for side in (-1, 1):
                cv.ellipse(t["csf"], side * 7, -10, 4, r.uniform(12, 20), angle=side * 0.3)
            if r.random() < 0.4:  # skull base: sinuses
                cv.ellipse(t["air"], r.uniform(-15, 15), -b * 0.6, r.uniform(6, 14), r.uniform(6, 12))
        elif region == "neck":
            a, b = r.uniform(55, 75), r.uniform(50, 65)
            cv.ellipse(t["fat"], 0, 0, a, b)
            cv.ellipse(t["muscle"], 0, 5, a - 8, b - 10)
            cv.ellipse(t["bone"], 0, 15, 13, 11)
            cv.ellipse(t["marrow"], 0, 15, 10, 8)
            cv.ellipse(t["csf"], 0, 32, 7, 6)
            cv.ellipse(t["bone"], 0, 44, 10, 4)
            cv.ellipse(t["air"], 0, -18, r.uniform(7, 11), r.uniform(6, 9))
            cv.ellipse(t["thyroid"], -15, -22, 9, 6)
            cv.ellipse(t["thyroid"], 15, -22, 9, 6)
            for side in (-1, 1):
                cv.ellipse(t["blood"], side * 25, -10, 5, 5)
                cv.ellipse(t["blood"], side * 33, -6, 6, 7)
        elif region in ("chest", "abdomen_pelvis"):
            a, b = body
            cv.ellipse(t["fat"], 0, 0, a, b)
            cv.ellipse(t["muscle"], 0, 0, a - r.uniform(12, 30), b - r.uniform(12, 25))
            cv.ellipse(t["bone"], 0, b - 45, 18, 16)
            cv.ellipse(t["marrow"], 0, b - 45, 14, 12)
            cv.ellipse(t["csf"], 0, b - 22, 7, 7)
            if region == "chest":
                for side in (-1, 1):
                    cv.ellipse(t["lung"], side * a * 0.45, 0, a * 0.38, b * 0.72,
                               wobble=0.05 * smooth_field(r, cv.tissue.shape, 10))
                cv.ellipse(t["blood"], r.uniform(-15, 5), -b * 0.2, r.uniform(38, 50), r.uniform(32, 42))
                cv.ellipse(t["blood"], -18, b - 60, 13, 13)
                for i in range(8):
                    ang = np.pi * (0.15 + 0.7 * i / 7)
                    for side in (-1, 1):
                        cv.ellipse(t["bone"], side * (a - 20) * np.cos(ang), (b - 15) * np.sin(ang) * 0.9, 5, 4)
            else:
                pelvis = r.random() < 0.4
                if pelvis:
                    cv.ellipse(t["bladder"], 0, -b * 0.25, r.uniform(30, 50), r.uniform(25, 40))
                    for side in (-1, 1):
                        cv.ellipse(t["bone"], side * a * 0.55, b * 0.2, 22, 22)
                        cv.ellipse(t["marrow"], side * a * 0.55, b * 0.2, 18, 18)
                else:
                    cv.ellipse(t["liver"], -a * 0.4, -b * 0.1, a * 0.45, b * 0.6)
                    cv.ellipse(t["spleen"], a * 0.55, b * 0.1, a * 0.2, b * 0.35)
                    for side in (-1, 1):
                        cv.ellipse(t["kidney"], side * 55, b * 0.35, 22, 30)
                    cv.ellipse(t["blood"], -12, b - 75, 11, 11)
                for _ in range(int(r.integers(4, 10))):
                    bx, by = r.uniform(-a * 0.5, a * 0.5), r.uniform(-b * 0.6, b * 0.3)
                    cv.ellipse(t["bowel"], bx, by, r.uniform(10, 22), r.uniform(8, 18))
                    if r.random() < 0.5:
                        cv.ellipse(t["air"], bx, by - 4, r.uniform(3, 9), r.uniform(2, 6))
        elif region == "leg":
            for side in (-1, 1):
                cv.ellipse(t["fat"], side * 70, 0, 55, 60)
                cv.ellipse(t["muscle"], side * 70, 0, 45, 50)
                cv.ellipse(t["bone"], side * 70, 0, 15, 15)
                cv.ellipse(t["marrow"], side * 70, 0, 10, 10)
        else:  # water phantom
            cv.ellipse(t["bladder"], 0, 0, fov * 0.35, fov * 0.35)
        slices.append(_ct_render(cv, names, r, contrast))
    return np.stack(slices), info


# ------------------------------------------------------------------ out of scope MR
def other_mr_volume(rng: np.random.Generator, n: int, size: int) -> tuple[np.ndarray, dict]:
    kind = str(rng.choice(["knee", "spine", "abdomen", "cylinder", "noise", "brain_dwi"]))
    fov = rng.uniform(150, 400)
    noise, scale = rng.uniform(0.01, 0.04), rng.uniform(300, 3000)
    slices = []
    sub = int(rng.integers(1 << 30))
    fatty = rng.random() < 0.5
    for k in range(n):
        r = np.random.default_rng([sub, k])
        cv = Canvas(size, fov)
        if kind == "knee":
            cv.ellipse(SKIN, 0, 0, fov * 0.3, fov * 0.42)
            cv.ellipse(MUSCLE, 0, 0, fov * 0.27, fov * 0.4)
            cv.ellipse(BONE, 0, -fov * 0.2, fov * 0.14, fov * 0.2)
            cv.ellipse(BONE, 0, fov * 0.22, fov * 0.13, fov * 0.18)
            cv.ellipse(CYST, 0, 0, fov * 0.12, fov * 0.015)
            sig = {SKIN: 0.6, MUSCLE: 0.3, BONE: 0.9 if fatty else 0.2, CYST: 0.9}
        elif kind == "spine":
            cv.ellipse(FAT, 0, 0, fov * 0.45, fov * 0.48)
            cv.ellipse(MUSCLE, fov * 0.2, 0, fov * 0.12, fov * 0.48)
            for i in range(5):
                cv.rect(BONE, -fov * 0.12, -fov * 0.42 + i * fov * 0.18, fov * 0.05, -fov * 0.3 + i * fov * 0.18)
            cv.rect(CYST, fov * 0.07, -fov * 0.5, fov * 0.12, fov * 0.5)
            sig = {FAT: 0.8, MUSCLE: 0.3, BONE: 0.6, CYST: 0.95 if fatty else 0.1}
        elif kind == "abdomen":
            cv.ellipse(FAT, 0, 0, fov * 0.45, fov * 0.33)
            cv.ellipse(MUSCLE, 0, 0, fov * 0.4, fov * 0.28)
            cv.ellipse(LIVER, -fov * 0.15, -fov * 0.05, fov * 0.2, fov * 0.18)
            cv.ellipse(CYST, fov * 0.18, fov * 0.05, fov * 0.06, fov * 0.09)
            cv.ellipse(BONE, 0, fov * 0.2, fov * 0.05, fov * 0.045)
            sig = {FAT: 0.9 if fatty else 0.1, MUSCLE: 0.3, LIVER: 0.45, CYST: 0.7, BONE: 0.5}
        elif kind == "cylinder":
            cv.ellipse(CYST, 0, 0, fov * 0.35, fov * 0.35)
            cv.rect(MUSCLE, -fov * 0.2, -fov * 0.05, fov * 0.2, fov * 0.05)
            sig = {CYST: 0.8, MUSCLE: 0.3}
        elif kind == "brain_dwi":
            _head(cv, r, (k - n / 2) * 4)
            sig = {WM: 0.5, GM: 0.55, CSF: 0.15 if fatty else 1.0, SCALP: 0.05, SKULL: 0.02,
                   TUMOR_RIM: 0.8, NECROSIS: 0.3, EDEMA: 0.6, SINUS: 0.05, DEEP_GM: 0.5, DURA: 0.1}
            img = mr_finish(cv.render(sig, r), r, noise, scale, blur=1.2)
            slices.append(img)
            continue
        else:
            slices.append((r.random((size, size)) * scale).astype(np.float32))
            continue
        slices.append(mr_finish(cv.render(jitter(r, sig), r), r, noise, scale))
    return np.stack(slices), {"kind": kind, "fov": fov}


# ------------------------------------------------------------------ series
def _from_dce_phantom(label: str, seed: int, split: str, n: int) -> PhantomSeries | None:
    """A subject of the DCE helper's physics phantom (T1 non-FS or first post-contrast)."""
    from models.family_series import dce_series

    series = dce_series(label, seed, split, n)
    return None if series is None else PhantomSeries(label, series[0], series[1], seed, {"source": series[2]})


def _middle(depth: int, n: int) -> list[int]:
    """n distinct slice indices spread over 30-70 % of a stack of `depth` (all if fewer)."""
    if depth <= n:
        return list(range(depth))
    idx = np.linspace(0.3 * (depth - 1), 0.7 * (depth - 1), n).round().astype(int)
    if len(set(idx.tolist())) < n:
        idx = np.linspace(0, depth - 1, n + 2)[1:-1].round().astype(int)
    return idx.tolist()


def _from_sibling_phantom(label: str, seed: int, split: str, depth: int, n: int) -> PhantomSeries | None:
    """A subject of the brain (seed 002) or CT (seed 004) helpers' phantoms, with their
    headers: the series their end-to-end tests and demos send; n of its `depth` slices."""
    series = _sibling_subject(label, seed, split, depth)
    if series is None or depth <= n:
        return series
    keep = _middle(depth, n)
    return PhantomSeries(series.label, series.volume[keep], [series.headers[k] for k in keep], series.seed,
                         series.info)


def _sibling_subject(label: str, seed: int, split: str, n: int) -> PhantomSeries | None:
    from models.family_series import sibling_series

    series = sibling_series(label, seed, split, n)
    return None if series is None else PhantomSeries(label, series[0], series[1], seed, {"source": series[2]})


SIBLINGS = ("brain_t1", "brain_t2", "brain_t1c", "brain_flair", "ct_head_neck", "ct_abdomen_pelvis")


def make_series(label: str, seed: int, *, n_slices: int = 5, degrade: bool = True,
                split: str = "train") -> PhantomSeries:
    """One phantom series of the class, deterministic in (label, seed)."""
    if label not in LABELS:
        raise ValueError(f"unknown label {label!r}; valid: {', '.join(LABELS)}")
    rng = np.random.default_rng([seed, LABELS.index(label)])
    if label in ("breast_t1_nc", "breast_dce_early") and rng.random() < 0.3:
        series = _from_dce_phantom(label, seed, split, n_slices)
        if series is not None:
            return series
    # The brain helper's phantom is half of the brain training data: its T1 and T1c differ
    # only where something enhances (rim, choroid plexus, dura, sinus), and with a quarter
    # the network split them near chance (classifier v1.1). A short series is cut from a
    # subject of 3 to 10 slices the way the service picks slices (30-70 % of the stack),
    # so the levels vary.
    sibling_share = 0.75 if label.startswith("brain_") else 0.25
    if label in SIBLINGS and rng.random() < sibling_share:
        depth = max(n_slices, int(rng.choice([3, 5, 6, 8, 10]))) if n_slices <= 3 else n_slices
        series = _from_sibling_phantom(label, seed, split, depth, n_slices)
        if series is not None:
            return series
    size = int(rng.choice([96, 128, 160]))
    info: dict = {}
    if label.startswith("breast_"):
        volume, info = breast_volume(label[len("breast_"):], rng, n_slices, size)
    elif label.startswith("brain_"):
        volume, info = brain_volume(label[len("brain_"):], rng, n_slices, size)
    elif label.startswith("ct_"):
        volume, info = ct_volume(label[len("ct_"):], rng, n_slices, size)
    else:
        if rng.random() < 0.25:
            volume, info = ct_volume(str(rng.choice(["leg", "water"])), rng, n_slices, size)
            info["modality"] = "CT"
        else:
            volume, info = other_mr_volume(rng, n_slices, size)
    headers = make_headers(label, info, volume, rng, seed, degrade)
    return PhantomSeries(label, volume.astype(np.float32), headers, seed, info)


def split_seeds(split: str, n: int) -> list[int]:
    if split not in SPLIT_BASE:
        raise ValueError(f"unknown split {split!r}; known: {sorted(SPLIT_BASE)}")
    return [SPLIT_BASE[split] + i for i in range(n)]


def dataset(split: str, per_class: int, n_slices: int = 5):
    """Every class, `per_class` series each, in a fixed order."""
    for seed in split_seeds(split, per_class):
        for label in LABELS:
            yield make_series(label, seed, n_slices=n_slices, split=split)
