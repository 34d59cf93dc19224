"""Evaluate CT -> pseudo-MRI on phantom test subjects, with the DCE model's conventions
(`models.dce.evaluate`): SSIM and PSNR per slice, MAE, MSE and Pearson r per series, on
[0, 1] per-slice min-max images ("unit") and restricted to the body ("body").

Methods:
- model:    the exported ONNX file run through `dicom_synth.multicontrast` (what the
            service runs);
- hu_map:   the baseline, a piecewise-linear HU -> intensity map fitted by quantile matching
            of *unpaired* training CT and MRI (the same information the CycleGAN gets: a
            per-voxel map can learn nothing more from unpaired data); it is monotone, so it
            cannot make fat bright and muscle dark at once;
- lut_paired (reference, not a baseline): a per-HU lookup fitted by least squares on
            *paired* training subjects, the best any per-voxel map can do; it sees registered
            truth the CycleGAN never sees.

Structure preservation (seed 004's point: contours drawn on the pseudo-MRI are in the CT's
frame): each organ of the CT's anatomy is re-drawn on each image with a local halfway
threshold near its boundary (`halfway_segment`) and compared with the CT's mask (Dice, per
organ, 3-D per series). The same is done on the true MRI, whose Dice is the ceiling of the
procedure.

    python -m models.ct.evaluate --test-subjects 2 --out runs/ct_eval
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from dicom_synth import intensity
from dicom_synth.multicontrast import normalise
from models.common.evaluate import (
    filled_body,
    phantom_main,
    save_panel,
    score_case,
    shortfalls,
    summarise,
    table_row,
    unit_slices,
)
from models.ct.phantom import ORGANS, REGIONS, L, generate_subject, split_seeds
from models.guided_filter import GuidedFilter

HU_KNOTS = (-1000, -900, -500, -200, -150, -120, -100, -80, -60, -40, -20, 0, 10, 20, 30, 40, 50, 60,
            70, 80, 100, 150, 200, 300, 500, 800, 1200, 2000)


# --- baselines ------------------------------------------------------------------------------
@dataclass(frozen=True)
class PiecewiseMap:
    """Intensity = piecewise-linear function of HU through (knots_hu, values)."""

    knots_hu: tuple[float, ...]
    values: tuple[float, ...]

    def __call__(self, hu: np.ndarray) -> np.ndarray:
        return np.clip(np.interp(hu, self.knots_hu, self.values), 0.0, 1.0).astype(np.float32)


def fit_quantile_map(ct_hu: np.ndarray, mr01: np.ndarray, n_knots: int = 41) -> PiecewiseMap:
    """Monotone map matching the CT body-voxel histogram to the MRI body-voxel histogram
    (unpaired: the two samples may come from different subjects)."""
    q = np.linspace(0, 100, n_knots)
    hx = np.percentile(ct_hu, q)
    hy = np.percentile(mr01, q)
    hx, idx = np.unique(hx, return_index=True)
    return PiecewiseMap(tuple(float(v) for v in hx), tuple(float(v) for v in hy[idx]))


def fit_paired_lut(ct_hu: np.ndarray, mr01: np.ndarray, knots: tuple[float, ...] = HU_KNOTS) -> PiecewiseMap:
    """Least-squares piecewise-linear map on registered voxels (hat-function basis)."""
    x = np.clip(ct_hu.astype(np.float64), knots[0], knots[-1])
    k = np.asarray(knots, np.float64)
    j = np.clip(np.searchsorted(k, x, side="right") - 1, 0, len(k) - 2)
    t = (x - k[j]) / (k[j + 1] - k[j])
    ata = np.zeros((len(k), len(k)))
    atb = np.zeros(len(k))
    for a, b, w in ((j, j, (1 - t) ** 2), (j + 1, j + 1, t**2), (j, j + 1, t * (1 - t)), (j + 1, j, t * (1 - t))):
        np.add.at(ata, (a, b), w)
    np.add.at(atb, j, (1 - t) * mr01)
    np.add.at(atb, j + 1, t * mr01)
    vals = np.linalg.lstsq(ata + 1e-6 * np.eye(len(k)), atb, rcond=None)[0]
    return PiecewiseMap(tuple(float(v) for v in k), tuple(float(v) for v in vals))


def body_mask_ct(ct_hu: np.ndarray) -> np.ndarray:
    """Body = above -500 HU, holes filled per slice (bowel gas, airway), largest 3-D part."""
    in_plane = np.zeros((3, 3, 3), bool)
    in_plane[1] = ndimage.generate_binary_structure(2, 1)
    return filled_body(ndimage.binary_opening(ct_hu > -500, structure=in_plane))


def fit_baselines(n_subjects: int = 4, n_slices: int = 12, size: int = 128) -> dict[str, PiecewiseMap]:
    """Both maps from *training* subjects (never test ones): CT and MRI of different
    subjects for the unpaired map, registered pairs for the reference LUT."""
    ct_unp, mr_unp, ct_pair, mr_pair = [], [], [], []
    for region in REGIONS:
        seeds = split_seeds("train", 2 * n_subjects)
        for i, seed in enumerate(seeds):
            s = generate_subject(seed, region, n_slices=n_slices, size=size)
            body = body_mask_ct(s.ct)
            mr01 = unit_slices(s.mr)
            (ct_unp if i % 2 == 0 else mr_unp).append((s.ct if i % 2 == 0 else mr01)[body])
            ct_pair.append(s.ct[body][::7])
            mr_pair.append(mr01[body][::7])
    return {"hu_map": fit_quantile_map(np.concatenate(ct_unp), np.concatenate(mr_unp)),
            "lut_paired": fit_paired_lut(np.concatenate(ct_pair), np.concatenate(mr_pair))}


# --- structure ------------------------------------------------------------------------------
def local_means(img01: np.ndarray, labels: np.ndarray, tissues: Iterable[int],
                sigma: float = 6.0) -> dict[int, np.ndarray]:
    """Tissue -> its intensity in `img01` around every pixel: the Gaussian-weighted mean over
    the tissue's core (eroded by one pixel, so partial volume does not count), so a smooth
    coil bias or a drift across the image does not matter."""
    out: dict[int, np.ndarray] = {}
    for t in tissues:
        m = labels == t
        core = ndimage.binary_erosion(m)
        core = core if core.any() else m
        w = ndimage.gaussian_filter(core.astype(np.float32), sigma)
        local = ndimage.gaussian_filter(np.where(core, img01, 0.0).astype(np.float32), sigma)
        out[int(t)] = np.where(w > 1e-3, local / np.maximum(w, 1e-6), float(np.median(img01[core])))
    return out


def junctions(labels: np.ndarray) -> np.ndarray:
    """Pixels whose 3x3 neighbourhood holds three or more tissues: their intensity is a
    mixture of several tissues and can look like a fourth, so no two-tissue decision reads it."""
    pad = np.pad(labels, 1, mode="edge")
    h, w = labels.shape
    nb = np.sort(np.stack([pad[i:i + h, j:j + w] for i in range(3) for j in range(3)]), axis=0)
    return 1 + (np.diff(nb, axis=0) != 0).sum(axis=0) >= 3


def halfway_segment(img01: np.ndarray, labels: np.ndarray, organ: tuple[int, ...], reference01: np.ndarray,
                    fraction: np.ndarray | None = None, radius: int = 4, sigma: float = 6.0,
                    min_contrast: float = 0.1, coverage: dict[str, int] | None = None) -> np.ndarray:
    """Re-draw one organ on one 2-D image with a local halfway threshold, as a contour tool
    would: within `radius` pixels of the organ's boundary in the CT anatomy, a pixel belongs
    to the organ when its intensity is nearer the local intensity of the nearest organ tissue
    than that of the nearest tissue outside. A boundary that moved, blurred or vanished in the
    image moves the contour. Three kinds of boundary pixel are left as the CT draws them, for
    every image alike: junctions of three tissues (`junctions`); pixels exactly half inside
    the organ (`fraction` 0.5: the label map breaks that tie by tissue order, an image
    cannot); and pairs of tissues whose contrast on the true MRI (`reference01`) is below
    `min_contrast` — a boundary T2 does not show cannot be contoured on a pseudo-MRI either.
    `coverage` (optional) accumulates the band's pixels ("band") and those scored ("scored")."""
    m = np.isin(labels, organ)
    band = ndimage.binary_dilation(m, iterations=radius) & ~ndimage.binary_erosion(m, iterations=radius)
    if coverage is not None:
        coverage["band"] = coverage.get("band", 0) + int(band.sum())
    band &= ~junctions(labels)
    if fraction is not None:
        band &= np.abs(fraction - 0.5) > 1e-6
    if not m.any() or m.all() or not band.any():
        return m
    _, idx_out = ndimage.distance_transform_edt(m, return_indices=True)  # nearest pixel outside
    _, idx_in = ndimage.distance_transform_edt(~m, return_indices=True)  # nearest pixel inside
    t_out, t_in = labels[tuple(idx_out)][band], labels[tuple(idx_in)][band]
    tissues = np.unique(np.concatenate([t_in, t_out]))
    pix = np.nonzero(band)

    def at(means: dict[int, np.ndarray], t: np.ndarray) -> np.ndarray:
        v = np.empty(t.shape, np.float32)
        for tissue in np.unique(t):
            sel = t == tissue
            v[sel] = means[int(tissue)][pix[0][sel], pix[1][sel]]
        return v

    mu, ref = local_means(img01, labels, tissues, sigma), local_means(reference01, labels, tissues, sigma)
    shown = np.abs(at(ref, t_in) - at(ref, t_out)) >= min_contrast
    if coverage is not None:
        coverage["scored"] = coverage.get("scored", 0) + int(shown.sum())
    x = img01[pix]
    inside = np.abs(x - at(mu, t_in)) < np.abs(x - at(mu, t_out))
    seg = m.copy()
    seg[pix[0][shown], pix[1][shown]] = inside[shown]
    return seg


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int((a & b).sum()) / s


def structure_scores(images01: dict[str, np.ndarray], labels: np.ndarray, organs: dict[str, tuple[int, ...]],
                     reference01: np.ndarray, fractions: dict[str, np.ndarray] | None = None,
                     min_pixels: int = 30, coverage: dict[str, dict[str, int]] | None = None
                     ) -> dict[str, dict[str, float]]:
    """Method -> organ -> 3-D Dice between the CT anatomy's organ and the organ re-drawn on
    each image by `halfway_segment` (slices where the organ covers at least `min_pixels`;
    `fractions`: organ -> partial-volume fraction per pixel, for the ties). `coverage`
    (optional): organ -> pixels of the boundary band and how many were scored (the same for
    every method, counted once)."""
    truth = {name: np.isin(labels, ids) for name, ids in organs.items()}
    keep = {name: [k for k in range(labels.shape[0]) if m[k].sum() >= min_pixels] for name, m in truth.items()}
    out: dict[str, dict[str, float]] = {}
    for i, (method, img) in enumerate(images01.items()):
        out[method] = {}
        for name, ks in keep.items():
            if ks:
                frac = (fractions or {}).get(name)
                cov = coverage.setdefault(name, {}) if coverage is not None and i == 0 else None
                seg = np.stack([halfway_segment(img[k], labels[k], organs[name], reference01[k],
                                                None if frac is None else frac[k], coverage=cov) for k in ks])
                out[method][name] = dice(seg, truth[name][ks])
    return out


# --- evaluation -----------------------------------------------------------------------------
def phantom_cases(n: int, n_slices: int = 24, size: int = 128) -> Iterable[dict]:
    for region in REGIONS:
        for seed in split_seeds("test", n):
            s = generate_subject(seed, region, n_slices=n_slices, size=size)
            yield {"id": f"{region}-{seed}", "region": region, "ct": s.ct, "mr": s.mr, "labels": s.labels,
                   "fractions": s.organ_fraction,
                   "organs": {name: tuple(L[t] for t in ts) for name, ts in ORGANS[region].items()}}


def evaluate(cases: Iterable[dict], model, baselines: dict[str, PiecewiseMap],
             panels_dir: Path | None = None) -> dict:
    """Every case through the model and the baselines. When the card names a post filter,
    `hu_map_filtered` (the HU map through that same filter) is added as a reference. A case
    without `labels` (a patient's CT and registered MR: no anatomy) gets no organ Dice."""
    post_filter = GuidedFilter.from_card(model.card.extra.get("post_filter"))
    results, seconds, n_total = [], 0.0, 0
    coverage: dict[str, dict[str, int]] = {}
    for case in cases:
        ct, mr = case["ct"], case["mr"]
        t = time.perf_counter()
        (syn,) = model.run(ct)
        seconds += time.perf_counter() - t
        n_total += ct.shape[0]
        p01 = (intensity.from_stored(syn.pixels, model.card.output_mapping) + 1.0) / 2.0
        y01 = unit_slices(mr)
        body = body_mask_ct(ct)
        preds = {"model": p01, **{k: unit_slices(f(ct)) for k, f in baselines.items()}}
        if post_filter is not None and "hu_map" in preds:
            preds["hu_map_filtered"] = post_filter.smooth(preds["hu_map"], normalise(ct, model.card.normalisation))
        scores = score_case(y01, preds, body)
        structure = structure_scores({"truth_mri": y01, **preds}, case["labels"], case["organs"], y01,
                                     case.get("fractions"), coverage=coverage) if "labels" in case else {}
        rec = {"id": case["id"], "region": case["region"], "n_slices": int(ct.shape[0]), "scores": scores,
               "structure": structure}
        if panels_dir is not None:
            k = int(np.argmax(np.isin(case["labels"], [i for ids in case["organs"].values() for i in ids]).sum(
                axis=(1, 2)))) if "labels" in case else ct.shape[0] // 2
            soft = np.clip((ct[k] + 160) / 400, 0, 1)
            rec["panel"] = str(save_panel(Path(panels_dir) / f"{case['id']}.png", [
                ("CT (W400 L40)", soft), ("true T2 MRI", y01[k]), ("pseudo-MRI", p01[k]),
                ("HU map", preds["hu_map"][k]), ("|pseudo - true| x2", np.abs(p01[k] - y01[k]) * 2)],
                f"{case['id']} slice {k + 1}"))
        results.append(rec)
    return {"cases": results, "table": summarise(results), "structure": summarise_structure(results),
            "structure_band_scored": {o: round(c.get("scored", 0) / max(c.get("band", 0), 1), 3)
                                      for o, c in sorted(coverage.items())},
            "n_series": len(results), "n_slices": n_total,
            "onnx_seconds_per_slice": round(seconds / max(n_total, 1), 4),
            "baselines": {k: {"knots_hu": v.knots_hu, "values": v.values} for k, v in baselines.items()}}


def summarise_structure(cases: list[dict]) -> dict:
    """Method -> organ -> [mean, sd] over series, plus 'mean' over all organ values."""
    out: dict = {}
    for method in cases[0]["structure"]:
        per: dict[str, list[float]] = {}
        for c in cases:
            for organ, v in c["structure"][method].items():
                per.setdefault(organ, []).append(v)
        allv = [v for vs in per.values() for v in vs]
        out[method] = {o: [float(np.mean(v)), float(np.std(v))] for o, v in sorted(per.items())}
        out[method]["mean"] = [float(np.mean(allv)), float(np.std(allv))]
    return out


def format_tables(res: dict) -> str:
    lines = [f"{res['n_series']} series, {res['n_slices']} slices; mean ± sd (SSIM/PSNR per slice, "
             "MAE/MSE/r per series); lut_paired is a reference that saw registered pairs"
             + ("; hu_map_filtered is the HU map through the model's CT-guided filter (reference)"
                if "hu_map_filtered" in res["table"] else ""),
             "| method | convention | SSIM | PSNR dB | MAE | MSE | Pearson r |", "|---|---|---|---|---|---|---|"]
    for method, convs in res["table"].items():
        for conv, r in convs.items():
            lines.append(f"| {method} | {conv} | {table_row(r)} |")
    organs = sorted({o for m in res["structure"].values() for o in m if o != "mean"})
    if organs:
        lines += ["", "Organ Dice, CT anatomy vs the organ re-segmented on each image (3-D per series)",
                  "| image | " + " | ".join(organs) + " | mean |", "|---" * (len(organs) + 2) + "|"]
    for method, per in res["structure"].items():
        cells = [f"{per[o][0]:.3f}" if o in per else "-" for o in organs]
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {per['mean'][0]:.3f} ± {per['mean'][1]:.3f} |")
    if cov := res.get("structure_band_scored", {}):
        lines.append("Boundary band (±4 px) scored, the rest left as the CT draws it: "
                     + ", ".join(f"{o} {v:.0%}" for o, v in cov.items()))
    misses = shortfalls(res["table"], ("hu_map",))
    lines += ["", "Where the model does not beat the hu_map baseline (mean, every convention and metric): "
              + ("; ".join(misses) if misses else "nowhere")]
    lines.append(f"ONNX Runtime: {res['onnx_seconds_per_slice']:.4f} s per slice")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return phantom_main(argv, description="Evaluate CT -> pseudo-MRI on phantom test subjects.", task="pseudo_mri",
                        test_subjects=2, slices=24, out="runs/ct_eval", per="per region", report=format_tables,
                        score=lambda model, n, slices, size, panels: evaluate(
                            phantom_cases(n, slices, size), model, fit_baselines(), panels_dir=panels))


if __name__ == "__main__":
    raise SystemExit(main())
