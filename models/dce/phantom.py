"""A seeded 3D phantom of the prone breast at 3 T: the non-fat-suppressed T1 FLASH a study
has, and the fat-suppressed first post-contrast VIBE phase the model learns to synthesize.

Anatomy is built from signed distance functions in millimetres (so partial volume at every
boundary comes from the distance, not from painting), tissues carry T1/PD/T2* and Tofts
kinetics from `physics`, and both series are computed from the spoiled gradient-echo
equation, then get the same coil bias field and their own Rician noise.

Pure numpy + scipy.ndimage: the service's tests and demo use it without torch.
Image axes follow DICOM LPS for an axial slice with ImageOrientationPatient 1\\0\\0\\0\\1\\0:
columns run to the patient's left (+x), rows run posterior (+y), slices run head-wards (+z).
Prone: breasts hang anteriorly, so they are at the top of the image, the heart below.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from models.common.split import SeedSplits
from models.dce import physics as ph

# Subjects are split by seed range, so a seed alone says which split it belongs to.
SPLITS = SeedSplits({"train": 1000, "val": 2000, "test": 3000})
SPLIT_BASE = SPLITS.base
FOV_MM = 384.0  # seed 000 protocol: FOV 384 mm, matrix 384, 1.0 mm slices


split_of = SPLITS.split_of
split_seeds = SPLITS.seeds


@dataclass
class PhantomSubject:
    """One subject: both series in scanner units (float32, not yet rounded) and truth maps."""

    seed: int
    split: str
    t1: np.ndarray  # (N, H, W) non-FS T1 FLASH, pre-contrast
    dce1: np.ndarray  # (N, H, W) SPAIR VIBE, first post-contrast phase
    body_mask: np.ndarray  # (N, H, W) bool
    lesion_mask: np.ndarray  # (N, H, W) bool, enhancing lesions only
    vessel_mask: np.ndarray  # (N, H, W) bool, breast vessels, mammary vessels, heart blood, aorta
    pixel_spacing_mm: float
    slice_spacing_mm: float
    z_mm: np.ndarray  # (N,) slice positions along +z (head-wards)
    info: dict = field(default_factory=dict)


class _Grid:
    """Millimetre coordinates of voxel centres, kept as broadcastable 1-D arrays."""

    def __init__(self, n: int, size: int, slice_mm: float, z0: float):
        self.px = FOV_MM / size
        self.dz = slice_mm
        c = (np.arange(size, dtype=np.float32) - (size - 1) / 2) * self.px
        self.x = c[None, None, :]
        self.y = c[None, :, None]
        self.z = (z0 + (np.arange(n, dtype=np.float32) - (n - 1) / 2) * slice_mm)[:, None, None]
        self.shape = (n, size, size)

    @property
    def pv_width(self) -> float:
        """Partial-volume ramp width: a voxel's extent (slices may be thicker than pixels)."""
        return float(max(self.px, 1.0))


def _ellipsoid_sdf(x, y, z, c, r) -> np.ndarray:
    """Approximate signed distance (mm) to an axis-aligned ellipsoid: f/|∇f|, exact near
    the surface, which is where partial volume and shell thicknesses need it."""
    u, v, w = (x - c[0]) / r[0], (y - c[1]) / r[1], (z - c[2]) / r[2]
    q = u * u + v * v + w * w
    g = np.sqrt((u / r[0]) ** 2 + (v / r[1]) ** 2 + (w / r[2]) ** 2) + 1e-6
    return ((q - 1.0) / (2.0 * g)).astype(np.float32)


def _ellipse_sdf(x, y, c, r) -> np.ndarray:
    """2-D version (structures running along z: torso, aorta, mammary vessels)."""
    u, v = (x - c[0]) / r[0], (y - c[1]) / r[1]
    q = u * u + v * v
    g = np.sqrt((u / r[0]) ** 2 + (v / r[1]) ** 2) + 1e-6
    return ((q - 1.0) / (2.0 * g)).astype(np.float32)


def _smin(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Smooth union of two distance fields (an inframammary fold, not a crease)."""
    h = np.clip(k - np.abs(a - b), 0.0, None) / k
    return np.minimum(a, b) - h * h * k * 0.25


def _alpha(sdf: np.ndarray, width: float) -> np.ndarray:
    """Voxel fraction inside a surface: a linear ramp one voxel wide (partial volume)."""
    return np.clip(0.5 - sdf / width, 0.0, 1.0).astype(np.float32)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int, int], cell_mm: float,
                  grid: _Grid, sigma_cells: float | tuple[float, float, float]) -> np.ndarray:
    """Gaussian random field with correlation length ~ cell_mm·sigma, made on a coarse grid
    and linearly upsampled (fast), normalised to zero mean and unit variance."""
    n, h, w = shape
    cz = max(2, int(np.ceil(n * grid.dz / cell_mm)) + 2)
    cy = max(2, int(np.ceil(h * grid.px / cell_mm)) + 2)
    coarse = rng.standard_normal((cz, cy, cy)).astype(np.float32)
    coarse = ndimage.gaussian_filter(coarse, sigma_cells, mode="wrap")
    zi = np.linspace(0.5, cz - 1.5, n, dtype=np.float32)
    yi = np.linspace(0.5, cy - 1.5, h, dtype=np.float32)
    xi = np.linspace(0.5, cy - 1.5, w, dtype=np.float32)
    out = _trilinear(coarse, zi, yi, xi)
    out -= out.mean()
    out /= out.std() + 1e-6
    return out


def _trilinear(vol: np.ndarray, zi: np.ndarray, yi: np.ndarray, xi: np.ndarray) -> np.ndarray:
    """Separable linear interpolation of a small volume onto a full grid."""

    def lerp_axis(a: np.ndarray, idx: np.ndarray, axis: int) -> np.ndarray:
        i0 = np.floor(idx).astype(int)
        i0 = np.clip(i0, 0, a.shape[axis] - 2)
        f = (idx - i0).astype(np.float32)
        shape = [1] * a.ndim
        shape[axis] = -1
        f = f.reshape(shape)
        return np.take(a, i0, axis=axis) * (1 - f) + np.take(a, i0 + 1, axis=axis) * f

    return lerp_axis(lerp_axis(lerp_axis(vol, zi, 0), yi, 1), xi, 2).astype(np.float32)


class _Composer:
    """Over-compositing of tissue layers into both series at once.

    Each layer has a voxel fraction alpha and a signal per series; the voxel keeps
    (1 - alpha) of what was below, so partial volume mixes signals, not parameters."""

    def __init__(self, shape: tuple[int, int, int]):
        self.t1 = np.zeros(shape, np.float32)
        self.dce = np.zeros(shape, np.float32)

    def add(self, alpha: np.ndarray, s_t1, s_dce, where: tuple[slice, ...] | None = None) -> None:
        sl = where if where is not None else (slice(None),) * 3
        a = alpha
        t1v, dcev = self.t1[sl], self.dce[sl]
        t1v *= 1.0 - a
        t1v += a * s_t1
        dcev *= 1.0 - a
        dcev += a * s_dce


@dataclass
class _Context:
    rng: np.random.Generator
    grid: _Grid
    t_post_min: float
    dose_scale: float
    fat_suppression: np.ndarray  # residual fat fraction after SPAIR, per voxel


def _tissue_signals(ctx: _Context, tissue: ph.Tissue, conc: np.ndarray | float | None = None,
                    t1_jitter: float = 1.0) -> tuple[np.ndarray | float, np.ndarray | float]:
    """Pre-contrast FLASH and post-contrast VIBE signal of a tissue (scalar or per voxel)."""
    t1_0 = tissue.t1_ms * t1_jitter
    if conc is None:
        conc = ph.tissue_concentration(ctx.t_post_min, tissue.ktrans, tissue.ve, tissue.vp,
                                       ctx.dose_scale)
    s_pre = float(ph.spgr_signal(tissue.pd, t1_0, tissue.t2s_ms, ph.T1_FLASH_NONFS))
    s_post = ph.spgr_signal(tissue.pd, ph.t1_with_gd(t1_0, conc), tissue.t2s_ms,
                            ph.VIBE_SPAIR_DCE)
    if np.ndim(s_post) == 0:
        s_post = float(s_post)
    return s_pre, s_post


def generate_subject(seed: int, n_slices: int = 48, size: int = 384,
                     slice_spacing_mm: float = 1.0) -> PhantomSubject:
    """Build one subject. Same seed and arguments give bit-identical arrays."""
    if n_slices < 1 or size < 32:
        raise ValueError("need n_slices >= 1 and size >= 32")
    rng = np.random.default_rng(seed)
    info: dict = {"seed": seed}

    # --- subject-level draws -------------------------------------------------------------
    density = str(rng.choice(["a", "b", "c", "d"], p=[0.15, 0.4, 0.3, 0.15]))  # BI-RADS
    fgt_fraction = {"a": 0.08, "b": 0.25, "c": 0.5, "d": 0.7}[density] * rng.uniform(0.8, 1.2)
    bpe = str(rng.choice(["minimal", "mild", "moderate", "marked"], p=[0.4, 0.3, 0.2, 0.1]))
    bpe_ktrans = {"minimal": 0.01, "mild": 0.03, "moderate": 0.07, "marked": 0.12}[bpe]
    # First post-contrast phase: 111 s per phase in the seed protocol; k-space centre of
    # phase 1 lands ~60-100 s after the bolus arrives.
    t_post_s = float(rng.uniform(60.0, 100.0))
    # Dose: the AIF is for 0.1 mmol/kg; body weight and cardiac output vary the bolus.
    dose_scale = float(rng.uniform(0.8, 1.25))
    info.update(density=density, fgt_fraction=round(fgt_fraction, 3), bpe=bpe,
                t_post_s=round(t_post_s, 1), dose_scale=round(dose_scale, 3))

    breast_depth = float(rng.uniform(70, 125))  # nipple to chest wall, mm (prone, pendulous)
    breast_rx = float(rng.uniform(58, 80))
    breast_rz = float(rng.uniform(70, 95))
    breast_cx = float(rng.uniform(84, 104))
    muscle_mm = float(rng.uniform(10, 18))  # pectoralis + intercostals
    subq_fat = float(rng.uniform(4, 12))  # subcutaneous fat over the chest wall, mm
    skin_mm = float(rng.uniform(1.3, 2.2))
    y_cw = float(rng.uniform(-15, 15))  # anterior chest wall surface at the midline
    # Slab position: the 48-slice slab is placed somewhere through the breasts.
    z0 = float(rng.uniform(-0.45, 0.45) * breast_rz) if n_slices * slice_spacing_mm < 100 else 0.0
    grid = _Grid(n_slices, size, slice_spacing_mm, z0)
    x, y, z = grid.x, grid.y, grid.z
    pv = grid.pv_width

    # SPAIR leaves a little fat signal, more where B0/B1 is poorer (lateral, far from
    # isocentre): 3-8 % centrally, up to ~20 % at the edges.
    r_lat = np.sqrt((x / 190.0) ** 2 + ((y - y_cw) / 190.0) ** 2 + (z / 150.0) ** 2)
    fat_sup = (rng.uniform(0.03, 0.08) + 0.15 * np.clip(r_lat - 0.4, 0, None) ** 2).astype(
        np.float32
    )
    ctx = _Context(rng, grid, t_post_s / 60.0, dose_scale, fat_sup)
    comp = _Composer(grid.shape)

    # --- body outline: torso ellipse ∪ two breast ellipsoids ---------------------------
    torso_b = float(rng.uniform(115, 135))
    torso_a = float(rng.uniform(150, 178))
    torso_c = (0.0, y_cw + torso_b)
    sdf_torso = _ellipse_sdf(x, y, torso_c, (torso_a, torso_b))  # (1, H, W)
    breasts = []
    sdf_body = np.broadcast_to(sdf_torso, grid.shape)
    for side in (-1.0, 1.0):
        cx = side * breast_cx * rng.uniform(0.95, 1.05)
        base_y = y_cw + torso_b - torso_b * np.sqrt(max(1 - (cx / torso_a) ** 2, 0.05))
        rx = breast_rx * rng.uniform(0.93, 1.07)
        rz = breast_rz * rng.uniform(0.93, 1.07)
        depth = breast_depth * rng.uniform(0.92, 1.08)
        c = (cx, base_y, 0.0)
        sdf_b = _ellipsoid_sdf(x, y, z, c, (rx, depth, rz))
        breasts.append({"c": c, "r": (rx, depth, rz), "sdf": sdf_b})
        sdf_body = _smin(sdf_body, sdf_b, 12.0)
    sdf_body = np.ascontiguousarray(sdf_body, dtype=np.float32)
    body_alpha = _alpha(sdf_body, pv)
    fat_pre, fat_post = _tissue_signals(ctx, ph.FAT)
    comp.add(body_alpha, fat_pre, fat_post * fat_sup)

    # --- fibroglandular tissue inside each breast --------------------------------------
    # Anisotropic texture: strands elongated antero-posteriorly, along the ducts.
    texture = 0.7 * _smooth_noise(rng, grid.shape, 3.0, grid, (1.5, 3.0, 1.5)) + 0.3 * _smooth_noise(
        rng, grid.shape, 1.5, grid, (1.0, 2.0, 1.0))
    in_breast = np.zeros(grid.shape, np.float32)
    prior = np.full(grid.shape, -10.0, np.float32)
    for b in breasts:
        (cx, by, _), (rx, depth, rz) = b["c"], b["r"]
        inner = _alpha(b["sdf"] + subq_fat, pv)  # inside the subcutaneous fat layer
        # anterior to the chest wall with a retromammary fat gap
        front = _alpha(6.0 - sdf_torso, pv)
        region = inner * front
        d = np.clip((by - y) / depth, 0.0, 1.0)  # 0 at chest wall, 1 at nipple
        radial = np.sqrt(((x - cx) / rx) ** 2 + (z / rz) ** 2) / np.sqrt(
            np.clip(1.0 - d * d, 0.05, None))
        # Glandular tissue sits centrally behind the nipple (a cone), fat at the periphery.
        p = (-3.5 * radial**2 + 0.8 * d - 1.5 * np.clip(0.15 - d, 0, None) / 0.15).astype(
            np.float32)
        np.maximum(in_breast, region, out=in_breast)
        prior = np.where(region > 0, np.maximum(prior, p), prior)
    g = texture + prior
    inside = in_breast > 0.5
    thr = float(np.quantile(g[inside], 1.0 - fgt_fraction)) if inside.any() else 0.0
    width = 0.25 * float(g[inside].std()) if inside.any() else 1.0
    fgt_alpha = (np.clip((g - thr) / width + 0.5, 0.0, 1.0) * in_breast).astype(np.float32)
    # Background parenchymal enhancement: subject level, varying slowly in space.
    bpe_map = np.clip(bpe_ktrans * (1.0 + 0.5 * _smooth_noise(rng, grid.shape, 20.0, grid, 1.0)),
                      0.002, None)
    fgt = ph.FIBROGLANDULAR
    cp, integral = ph.tofts_integral(ctx.t_post_min, bpe_ktrans / fgt.ve, dose_scale)
    conc_fgt = fgt.vp * cp + bpe_map * integral
    t1j = float(rng.uniform(0.92, 1.08))
    fgt_pre, fgt_post = _tissue_signals(ctx, fgt, conc_fgt, t1j)
    comp.add(fgt_alpha, fgt_pre, fgt_post)
    del texture, prior, g, bpe_map, conc_fgt, fgt_post

    # --- chest wall muscle and thoracic cavity -----------------------------------------
    depth_t = -sdf_torso  # mm below the torso surface
    wall = subq_fat + muscle_mm + 4.0  # ribs and intercostals count as muscle here
    muscle_alpha = (_alpha(-(depth_t - subq_fat), pv) * _alpha(depth_t - wall, pv))
    mus_pre, mus_post = _tissue_signals(ctx, ph.MUSCLE, t1_jitter=float(rng.uniform(0.95, 1.05)))
    comp.add(np.broadcast_to(muscle_alpha, grid.shape), mus_pre, mus_post)
    # Sternum marrow between the breasts, under the pectoral fascia.
    sdf_st = _ellipse_sdf(x, y, (0.0, y_cw + subq_fat + 9.0), (13.0, 5.5))
    mar_pre, mar_post = _tissue_signals(ctx, ph.MARROW)
    comp.add(np.broadcast_to(_alpha(sdf_st, pv), grid.shape), mar_pre, mar_post * 0.15)
    cav_alpha = _alpha(sdf_torso + wall, pv)
    lung_pre, lung_post = _tissue_signals(ctx, ph.LUNG)
    comp.add(np.broadcast_to(cav_alpha, grid.shape), lung_pre, lung_post)

    vessel_alpha = np.zeros(grid.shape, np.float32)
    # Heart: myocardial shell around the blood pool, left of the midline, behind the sternum.
    hc = (float(rng.uniform(15, 40)), y_cw + wall + float(rng.uniform(48, 62)),
          float(rng.uniform(-60, 20)))
    hr = (float(rng.uniform(55, 68)), float(rng.uniform(42, 52)), float(rng.uniform(50, 65)))
    sdf_h = _ellipsoid_sdf(x, y, z, hc, hr)
    heart_alpha = _alpha(sdf_h, pv) * cav_alpha
    myo_pre, myo_post = _tissue_signals(ctx, ph.MYOCARDIUM)
    comp.add(heart_alpha, myo_pre, myo_post)
    pool = _alpha(sdf_h + float(rng.uniform(9, 13)), pv)
    np.maximum(vessel_alpha, pool, out=vessel_alpha)
    del sdf_h, heart_alpha, pool
    # Descending aorta (posterior, left of the spine) and internal mammary vessels.
    ao = _ellipse_sdf(x, y, (float(rng.uniform(15, 35)), y_cw + torso_b + float(rng.uniform(45, 70))),
                      (12.0, 12.0))
    np.maximum(vessel_alpha, _alpha(ao, pv), out=vessel_alpha)
    for side in (-1.0, 1.0):
        for dx, r in ((0.0, 1.8), (4.0, 1.4)):  # artery and vein side by side
            c = (side * (float(rng.uniform(22, 32)) + dx), y_cw + subq_fat + 22.0)
            m = _ellipse_sdf(x, y, c, (r, r))
            np.maximum(vessel_alpha, _alpha(m, pv), out=vessel_alpha)

    # --- breast vessels: meandering tubes from the chest wall towards the nipple -------
    n_vessels = int(rng.integers(12, 25))
    for b in breasts:
        (cx, by, _), (rx, depth, rz) = b["c"], b["r"]
        for _ in range(n_vessels):
            start = np.array([cx + rng.uniform(-0.9, 0.9) * rx, by - rng.uniform(2, 10),
                              z0 + rng.uniform(-0.6, 0.6) * n_slices * slice_spacing_mm])
            target = np.array([cx + rng.uniform(-0.3, 0.3) * rx, by - depth * rng.uniform(0.6, 0.95),
                               start[2] + rng.uniform(-8, 8)])
            _stamp_vessel(vessel_alpha, grid, rng, start, target, float(rng.uniform(1.0, 2.2)))
        # the lateral thoracic vessel along the breast's outer edge
        side = np.sign(cx)
        start = np.array([cx + side * rx * 0.9, by + 5, z0 + rng.uniform(-10, 10)])
        target = np.array([cx + side * rx * 0.6, by - depth * 0.5, start[2] + rng.uniform(-5, 5)])
        _stamp_vessel(vessel_alpha, grid, rng, start, target, float(rng.uniform(1.5, 2.5)))
    vessel_alpha *= body_alpha
    blood_pre, blood_post = _tissue_signals(ctx, ph.BLOOD)
    comp.add(vessel_alpha, blood_pre, blood_post)

    # --- lesions --------------------------------------------------------------------------
    lesion_alpha_all = np.zeros(grid.shape, np.float32)
    lesions = []
    n_les = int(rng.choice([0, 1, 1, 2, 2, 3]))
    for _ in range(n_les):
        les = _add_lesion(ctx, comp, breasts, fgt_alpha, z0, n_slices * slice_spacing_mm,
                          lesion_alpha_all)
        if les:
            lesions.append(les)
    info["lesions"] = lesions

    # --- skin and nipples -----------------------------------------------------------------
    skin_alpha = body_alpha * _alpha(-(sdf_body + skin_mm), pv)
    skin_pre, skin_post = _tissue_signals(ctx, ph.SKIN)
    comp.add(skin_alpha, skin_pre, skin_post)
    for b in breasts:
        (cx, by, _), (rx, depth, rz) = b["c"], b["r"]
        nc = (cx, by - depth - 2.0, 0.0)
        sdf_n = _ellipsoid_sdf(x, y, z, nc, (6.0, 5.0, 6.0))
        comp.add(_alpha(sdf_n, pv), skin_pre, skin_post)
        body_alpha = np.maximum(body_alpha, _alpha(sdf_n, pv))

    # --- acquisition: coil bias, scanner scaling, Rician noise -------------------------
    bias = _coil_bias(rng, grid, y_cw)
    t1 = comp.t1 * bias
    dce = comp.dce * bias * _smooth_gain(rng, grid)
    body_mask = body_alpha >= 0.5
    t1 = _scale_and_noise(rng, t1, body_mask, target=float(rng.uniform(1200, 3000)),
                          noise=float(rng.uniform(0.008, 0.02)))
    dce = _scale_and_noise(rng, dce, body_mask, target=float(rng.uniform(800, 2500)),
                           noise=float(rng.uniform(0.010, 0.025)))
    return PhantomSubject(
        seed=seed, split=split_of(seed), t1=t1, dce1=dce, body_mask=body_mask,
        lesion_mask=lesion_alpha_all >= 0.5, vessel_mask=vessel_alpha >= 0.5,
        pixel_spacing_mm=grid.px, slice_spacing_mm=slice_spacing_mm,
        z_mm=grid.z.ravel().copy(), info=info,
    )


def _stamp_vessel(alpha: np.ndarray, grid: _Grid, rng: np.random.Generator, start: np.ndarray,
                  target: np.ndarray, radius: float) -> None:
    """Rasterise a meandering tube with partial volume by stamping spheres along its path
    (only the small boxes it touches are computed)."""
    length = float(np.linalg.norm(target - start))
    n = max(int(length / 0.6), 2)
    t = np.linspace(0.0, 1.0, n)[:, None]
    path = start + (target - start) * t
    # meander: low-frequency sinusoidal offsets perpendicular-ish to the path
    for axis, amp in ((0, 6.0), (2, 3.0), (1, 3.0)):
        k = rng.uniform(1.0, 3.0)
        path[:, axis] += amp * rng.uniform(0.3, 1.0) * np.sin(2 * np.pi * k * t[:, 0] + rng.uniform(0, 6.3))
    radii = radius * (1.0 - 0.5 * t[:, 0])  # tapers towards the nipple
    n_s, h, w = grid.shape
    z_axis, y_axis, x_axis = grid.z.ravel(), grid.y.ravel(), grid.x.ravel()
    z_lo, z_hi = z_axis[0] - 3, z_axis[-1] + 3
    for (px_, py_, pz_), r in zip(path, radii, strict=True):
        if not z_lo <= pz_ <= z_hi:
            continue
        reach = r + grid.pv_width
        ks = np.searchsorted(z_axis, [pz_ - reach, pz_ + reach])
        js = np.searchsorted(y_axis, [py_ - reach, py_ + reach])
        is_ = np.searchsorted(x_axis, [px_ - reach, px_ + reach])
        if ks[0] >= ks[1] or js[0] >= js[1] or is_[0] >= is_[1]:
            continue
        sl = (slice(ks[0], ks[1]), slice(js[0], js[1]), slice(is_[0], is_[1]))
        d = np.sqrt((z_axis[sl[0], None, None] - pz_) ** 2 + (y_axis[None, sl[1], None] - py_) ** 2
                    + (x_axis[None, None, sl[2]] - px_) ** 2)
        np.maximum(alpha[sl], _alpha(d - r, grid.pv_width), out=alpha[sl])


def _add_lesion(ctx: _Context, comp: _Composer, breasts: list[dict], fgt_alpha: np.ndarray,
                z0: float, slab_mm: float, lesion_alpha_all: np.ndarray) -> dict | None:
    """One lesion in a breast, inside the slab: cyst, benign mass or malignant mass."""
    rng, grid = ctx.rng, ctx.grid
    kind = str(rng.choice(["cyst", "persistent", "plateau", "washout"], p=[0.15, 0.3, 0.25, 0.3]))
    b = breasts[int(rng.integers(0, 2))]
    (cx, by, _), (rx, depth, _rz) = b["c"], b["r"]
    r0 = float(rng.uniform(3.0, 6.0) if kind == "cyst" else rng.uniform(3.5, 12.0))
    # Half in the central glandular cone, half anywhere in the breast (fat included).
    spread, (d_lo, d_hi) = (0.45, (0.2, 0.6)) if rng.random() < 0.5 else (0.7, (0.15, 0.75))
    centre = np.array([cx + rng.uniform(-spread, spread) * rx, by - depth * rng.uniform(d_lo, d_hi),
                       z0 + rng.uniform(-0.35, 0.35) * slab_mm])
    reach = r0 * 1.6 + 4.0
    z_axis, y_axis, x_axis = grid.z.ravel(), grid.y.ravel(), grid.x.ravel()
    ks = np.searchsorted(z_axis, [centre[2] - reach, centre[2] + reach])
    js = np.searchsorted(y_axis, [centre[1] - reach, centre[1] + reach])
    is_ = np.searchsorted(x_axis, [centre[0] - reach, centre[0] + reach])
    if ks[0] >= ks[1] or js[0] >= js[1] or is_[0] >= is_[1]:
        return None
    sl = (slice(ks[0], ks[1]), slice(js[0], js[1]), slice(is_[0], is_[1]))
    dz = z_axis[sl[0], None, None] - centre[2]
    dy = y_axis[None, sl[1], None] - centre[1]
    dx = x_axis[None, None, sl[2]] - centre[0]
    dist = np.sqrt(dx * dx + dy * dy + dz * dz) + 1e-6
    u = np.stack(np.broadcast_arrays(dx / dist, dy / dist, dz / dist))
    # Shape: oval (benign/cyst) or lobulated and spiculated (malignant), as r(direction).
    radius = np.full(dist.shape, r0, np.float32)
    stretch = rng.uniform(0.7, 1.3, size=3)
    radius = radius / np.sqrt(np.tensordot(stretch**-2, u**2, axes=1) + 1e-6) * 1.0
    malignant = kind in ("plateau", "washout")
    n_lobes = int(rng.integers(3, 7)) if malignant else int(rng.integers(0, 3))
    for _ in range(n_lobes):
        v = rng.standard_normal(3)
        v /= np.linalg.norm(v)
        cos = np.tensordot(v, u, axes=1)
        radius = radius * (1.0 + (0.25 if malignant else 0.1) * np.clip(cos, 0, None) ** 4)
    if malignant:
        for _ in range(int(rng.integers(4, 10))):  # spicules: narrow cones
            v = rng.standard_normal(3)
            v /= np.linalg.norm(v)
            cos = np.tensordot(v, u, axes=1)
            radius = radius + r0 * rng.uniform(0.3, 0.6) * np.clip(cos, 0, None) ** 60
    sdf = dist - radius
    a = _alpha(sdf, grid.pv_width) * _alpha(b["sdf"][sl] + 2.0, grid.pv_width)
    if kind == "cyst":
        s_pre, s_post = _tissue_signals(ctx, ph.CYST)
        comp.add(a, s_pre, s_post, where=sl)
        return {"kind": kind, "centre_mm": centre.round(1).tolist(), "radius_mm": round(r0, 1),
                "curve": "none"}
    k = ph.LESION_KINETICS[kind]
    ve = float(rng.uniform(*k["ve"]))
    kep = float(rng.uniform(*k["kep"]))
    vp = float(rng.uniform(*k["vp"]))
    ktrans = ve * kep
    cp, integral = ph.tofts_integral(ctx.t_post_min, kep, ctx.dose_scale)
    rel = np.clip(dist / np.maximum(radius, 1e-3), 0.0, 1.0)
    if malignant:  # rim enhancement with a less perfused (necrotic) core in large masses
        core = 0.25 if r0 > 8 else 0.6
        kmap = ktrans * (core + (1 - core) * rel**2)
    else:
        kmap = ktrans * (0.85 + 0.15 * rel)
    conc = vp * cp + kmap * integral
    s_pre, s_post = _tissue_signals(ctx, ph.LESION, conc, float(rng.uniform(0.9, 1.1)))
    comp.add(a, s_pre, s_post, where=sl)
    np.maximum(lesion_alpha_all[sl], a, out=lesion_alpha_all[sl])
    return {"kind": "malignant" if malignant else "benign", "curve": kind,
            "centre_mm": centre.round(1).tolist(), "radius_mm": round(r0, 1),
            "ktrans": round(ktrans, 3), "ve": round(ve, 3), "vp": round(vp, 3)}


def _coil_bias(rng: np.random.Generator, grid: _Grid, y_cw: float) -> np.ndarray:
    """Receive-coil sensitivity: a breast coil sees the breasts best and the thorax less,
    times a smooth random field (±~15 %)."""
    depth = (grid.y - y_cw) / 60.0
    profile = 0.45 + 0.55 / (1.0 + np.exp(2.0 * (depth - 0.6)))
    lat = 1.0 + 0.1 * (np.abs(grid.x) / 190.0) ** 2
    smooth = np.exp(0.12 * _smooth_noise(rng, grid.shape, 60.0, grid, 1.0))
    return (profile * lat * smooth).astype(np.float32)


def _smooth_gain(rng: np.random.Generator, grid: _Grid) -> np.ndarray:
    """A second, small transmit/receive difference between the two acquisitions (±~5 %)."""
    return np.exp(0.05 * _smooth_noise(rng, grid.shape, 80.0, grid, 1.0)).astype(np.float32)


def _scale_and_noise(rng: np.random.Generator, s: np.ndarray, body: np.ndarray, target: float,
                     noise: float) -> np.ndarray:
    """Scanner scaling (the 99.5th body percentile to `target` stored units) and Rician
    noise (magnitude of complex Gaussian) with sigma = noise · target."""
    ref = float(np.percentile(s[body], 99.5)) if body.any() else float(s.max() + 1e-6)
    s = s * np.float32(target / max(ref, 1e-9))
    sigma = np.float32(noise * target)
    re = s + sigma * rng.standard_normal(s.shape, dtype=np.float32)
    im = sigma * rng.standard_normal(s.shape, dtype=np.float32)
    return np.sqrt(re * re + im * im).astype(np.float32)
