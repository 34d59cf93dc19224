"""MR physics for the breast DCE phantom: tissue parameters at 3 T, the spoiled gradient-echo
signal equation, gadolinium relaxivity, a population arterial input function and the
extended Tofts model. Pure numpy, so the service can build demo data without torch.

Values are literature figures at 3 T; each is cited where it is defined. They are
population means: the phantom draws subject-to-subject variation around them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Gadobutrol longitudinal relaxivity in plasma at 3 T, 37 °C: 5.0 s^-1 mM^-1
# (Rohrer et al., Invest Radiol 2005;40:715-724; Shen et al., Invest Radiol 2015;50:330-338).
# The seed study used gadobenate (r1 ≈ 5.5 at 3 T, same sources); the difference is within
# the subject variation the phantom draws.
GADOBUTROL_R1_PER_MM_S = 5.0

# Haematocrit for the plasma/blood conversion of the AIF (Parker et al. 2006 used 0.42).
HAEMATOCRIT = 0.42


@dataclass(frozen=True)
class Sequence:
    """A 3D spoiled gradient-echo acquisition as the scanner protocol states it."""

    name: str
    tr_ms: float
    te_ms: float
    flip_deg: float
    fat_suppressed: bool


# Seed 000 protocol (Siemens Prisma 3 T): non-fat-suppressed T1 3D FLASH input ...
T1_FLASH_NONFS = Sequence("t1_fl3d_tra_nonfs", tr_ms=5.43, te_ms=2.46, flip_deg=20.0,
                          fat_suppressed=False)
# ... and the first post-contrast phase of the SPAIR fat-suppressed VIBE DCE series.
VIBE_SPAIR_DCE = Sequence("t1_fl3d_tra_dynaVIEWS_spair", tr_ms=4.66, te_ms=1.62, flip_deg=11.0,
                          fat_suppressed=True)


@dataclass(frozen=True)
class Tissue:
    """Relaxation, proton density (relative to water = 1) and Tofts kinetics of one tissue.

    ktrans in min^-1, ve and vp as volume fractions; ve = 0 means no leakage."""

    name: str
    t1_ms: float
    pd: float
    t2s_ms: float
    ktrans: float = 0.0
    ve: float = 0.0
    vp: float = 0.0
    is_fat: bool = False


# T1 at 3 T: breast fat 367 ms and fibroglandular tissue 1445 ms (Rakow-Penner et al., JMRI
# 2006;23:87-91); skeletal muscle 1412 ms, myocardium 1471 ms, blood 1932 ms (Stanisz et al.,
# MRM 2005;54:507-512); skin ~1000 ms (dermis, Richard et al. 1993 scaled to 3 T).
# T2* at 3 T: fat ~ 30 ms, breast parenchyma ~ 25 ms, muscle ~ 28 ms, lung ~ 1 ms
# (Yu et al. 2006; Hatabu 1999). Proton densities are relative water content.
# Kinetics: normal fibroglandular tissue Ktrans 0.01-0.1 min^-1 (background parenchymal
# enhancement), fat ~0.01; muscle Ktrans ~0.1, ve ~0.1; skin enhances modestly
# (population Tofts fits in breast DCE, e.g. Li et al., MRM 2008;60:1043-1054).
FAT = Tissue("fat", 367.0, 0.90, 30.0, ktrans=0.01, ve=0.10, vp=0.005, is_fat=True)
FIBROGLANDULAR = Tissue("fibroglandular", 1445.0, 0.80, 25.0, ktrans=0.04, ve=0.30, vp=0.01)
MUSCLE = Tissue("muscle", 1412.0, 0.75, 28.0, ktrans=0.10, ve=0.12, vp=0.02)
SKIN = Tissue("skin", 1000.0, 0.70, 20.0, ktrans=0.15, ve=0.25, vp=0.03)
MYOCARDIUM = Tissue("myocardium", 1471.0, 0.78, 25.0, ktrans=0.50, ve=0.25, vp=0.10)
BLOOD = Tissue("blood", 1932.0, 0.85, 40.0, vp=1.0)
LUNG = Tissue("lung", 1200.0, 0.15, 1.0, ktrans=0.05, ve=0.05, vp=0.05)
MARROW = Tissue("marrow", 380.0, 0.85, 15.0, ktrans=0.05, ve=0.10, vp=0.02, is_fat=True)
# Lesions: invasive carcinoma pre-contrast T1 ~1.6-2.0 s at 3 T (at or above
# fibroglandular tissue, Rakow-Penner 2006 range); kinetics by curve type below.
LESION = Tissue("lesion", 1900.0, 0.85, 25.0)
# Simple cysts: fluid, long T1 (~3 s at 3 T, like CSF/urine) and no enhancement.
CYST = Tissue("cyst", 3000.0, 0.95, 60.0)

# Lesion kinetics by BI-RADS curve type (Kuhl et al., Radiology 1999;211:101-110), drawn as
# ve and kep = Ktrans/ve ranges that give each curve shape under the Parker AIF between
# 1.5 and 6 min (checked by `curve_type` in the tests); Ktrans then spans ~0.04-1.3 min^-1,
# the range of breast DCE Tofts fits (e.g. Li et al., MRM 2008;60:1043-1054).
LESION_KINETICS: dict[str, dict[str, tuple[float, float]]] = {
    "persistent": {"ve": (0.40, 0.70), "kep": (0.08, 0.20), "vp": (0.01, 0.03)},
    "plateau": {"ve": (0.35, 0.60), "kep": (0.30, 0.36), "vp": (0.01, 0.03)},
    "washout": {"ve": (0.20, 0.45), "kep": (1.00, 3.00), "vp": (0.03, 0.08)},
}


def spgr_signal(pd: np.ndarray | float, t1_ms: np.ndarray | float, t2s_ms: float,
                seq: Sequence) -> np.ndarray:
    """Steady-state spoiled gradient-echo signal (Ernst equation with T2* decay)."""
    a = np.deg2rad(seq.flip_deg)
    e1 = np.exp(-seq.tr_ms / np.asarray(t1_ms, dtype=np.float64))
    s = pd * np.sin(a) * (1.0 - e1) / (1.0 - np.cos(a) * e1) * np.exp(-seq.te_ms / t2s_ms)
    return np.asarray(s, dtype=np.float32)


def t1_with_gd(t1_ms: np.ndarray | float, conc_mm: np.ndarray | float,
               r1: float = GADOBUTROL_R1_PER_MM_S) -> np.ndarray:
    """Fast-exchange relaxation: R1 = R1,0 + r1·C."""
    r1_total = 1000.0 / np.asarray(t1_ms, dtype=np.float64) + r1 * np.asarray(conc_mm)
    return 1000.0 / r1_total


def parker_aif(t_min: np.ndarray) -> np.ndarray:
    """Population blood AIF in mM for 0.1 mmol/kg (Parker et al., MRM 2006;56:993-1000, Table 1).

    t is minutes after bolus arrival offset as in the paper (first-pass peak at ~0.17 min)."""
    t = np.asarray(t_min, dtype=np.float64)
    a1, a2 = 0.809, 0.330  # mmol·min
    t1, t2 = 0.17046, 0.365  # min
    s1, s2 = 0.0563, 0.132  # min
    alpha, beta = 1.050, 0.1685  # mmol, min^-1
    s, tau = 38.078, 0.483  # min^-1, min
    g1 = a1 / (s1 * np.sqrt(2 * np.pi)) * np.exp(-((t - t1) ** 2) / (2 * s1**2))
    g2 = a2 / (s2 * np.sqrt(2 * np.pi)) * np.exp(-((t - t2) ** 2) / (2 * s2**2))
    tail = alpha * np.exp(-beta * t) / (1.0 + np.exp(-s * (t - tau)))
    return np.where(t >= 0, g1 + g2 + tail, 0.0)


def tofts_integral(t_min: float, kep: float, dose_scale: float = 1.0,
                   dt_min: float = 1.0 / 120) -> tuple[float, float]:
    """(plasma concentration Cp(t), ∫ Cp(τ) e^{-kep (t-τ)} dτ) at time t.

    Tissue concentration is then vp·Cp + Ktrans·integral, linear in Ktrans, so one call
    serves a whole lesion whose Ktrans varies in space (rim enhancement)."""
    tau = np.arange(0.0, t_min + dt_min / 2, dt_min)
    cp = dose_scale * parker_aif(tau) / (1.0 - HAEMATOCRIT)
    kernel = np.exp(-kep * (t_min - tau))
    return float(cp[-1]), float(np.trapezoid(cp * kernel, tau))


def tissue_concentration(t_min: float, ktrans: float, ve: float, vp: float,
                         dose_scale: float = 1.0) -> float:
    """Extended Tofts tissue concentration in mM at time t (minutes)."""
    if ve <= 0 or ktrans <= 0:
        cp, _ = tofts_integral(t_min, 0.0, dose_scale)
        return vp * cp
    cp, integral = tofts_integral(t_min, ktrans / ve, dose_scale)
    return vp * cp + ktrans * integral


def enhancement_curve(ktrans: float, ve: float, vp: float, times_min: np.ndarray) -> np.ndarray:
    """Concentration at several times; used to check a lesion's curve type."""
    return np.array([tissue_concentration(float(t), ktrans, ve, vp) for t in times_min])


def curve_type(ktrans: float, ve: float, vp: float, t_early_min: float = 1.5,
               t_late_min: float = 6.0) -> str:
    """BI-RADS delayed-phase shape: > +10 % persistent, < -10 % washout, else plateau
    (relative change of concentration from the early to the late phase)."""
    c = enhancement_curve(ktrans, ve, vp, np.array([t_early_min, t_late_min]))
    change = (c[1] - c[0]) / max(c[0], 1e-9)
    if change > 0.10:
        return "persistent"
    if change < -0.10:
        return "washout"
    return "plateau"
