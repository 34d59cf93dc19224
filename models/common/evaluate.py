"""The evaluation frame every family scores with (the seed papers' conventions): SSIM and
PSNR per slice, MAE, MSE and Pearson r per series, for the model and the family's baselines,
under two stated conventions:

- "unit":   every slice min-max scaled to [0, 1], data range 1, whole image;
- "body":   the same images, every metric restricted to the body mask (air excluded;
            air is easy and inflates SSIM/PSNR, which moves PSNR by several dB).

Also: where the model falls short of a baseline, the table row, PNG panels, and writing
`metrics.json` and `table.md`. Pure numpy/scipy (no torch): it scores the ONNX file the
service runs.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
from scipy import ndimage

from dicom_synth import intensity

CONVENTIONS = ("unit", "body")
_K1, _K2, _SIGMA = 0.01, 0.03, 1.5  # Wang et al. 2004 SSIM constants and Gaussian window


# --- metrics --------------------------------------------------------------------------------
def ssim_map(a: np.ndarray, b: np.ndarray, data_range: float = 1.0) -> np.ndarray:
    """SSIM map of two 2-D images (Gaussian σ = 1.5 window, K1 = 0.01, K2 = 0.03)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    f = lambda v: ndimage.gaussian_filter(v, _SIGMA, truncate=3.5)  # noqa: E731 (11x11)
    mu_a, mu_b = f(a), f(b)
    saa = f(a * a) - mu_a**2
    sbb = f(b * b) - mu_b**2
    sab = f(a * b) - mu_a * mu_b
    c1, c2 = (_K1 * data_range) ** 2, (_K2 * data_range) ** 2
    return ((2 * mu_a * mu_b + c1) * (2 * sab + c2)) / ((mu_a**2 + mu_b**2 + c1) * (saa + sbb + c2))


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 1.0,
         mask: np.ndarray | None = None) -> float:
    """Mean SSIM over the image, or over the mask."""
    m = ssim_map(a, b, data_range)
    if mask is None:
        return float(m.mean())
    return float(m[mask].mean()) if mask.any() else float("nan")


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 1.0,
         mask: np.ndarray | None = None) -> float:
    """10·log10(data_range² / MSE); infinite for identical images."""
    d = (np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2
    mse = float(d[mask].mean() if mask is not None else d.mean())
    return float("inf") if mse == 0 else float(10 * np.log10(data_range**2 / mse))


def series_errors(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> dict[str, float]:
    """MAE, MSE and Pearson r between two series (all voxels, or the masked ones)."""
    x = np.asarray(a, np.float64)[mask] if mask is not None else np.asarray(a, np.float64).ravel()
    y = np.asarray(b, np.float64)[mask] if mask is not None else np.asarray(b, np.float64).ravel()
    d = x - y
    sx, sy = x.std(), y.std()
    r = float(((x - x.mean()) * (y - y.mean())).mean() / (sx * sy)) if sx > 0 and sy > 0 else 0.0
    return {"mae": float(np.abs(d).mean()), "mse": float((d * d).mean()), "r": r}


def unit_slices(volume: np.ndarray) -> np.ndarray:
    """Per-slice min-max to [0, 1] (the "unit" convention)."""
    return intensity.normalise_slices(volume, 0.0, 1.0)


def body_mask(volume: np.ndarray, frac: float = 0.08) -> np.ndarray:
    """Body = smoothed signal above a fraction of the robust maximum, holes filled per slice,
    largest 3-D component kept. Made from the *input* series, so every method is scored on
    the same voxels."""
    v = ndimage.gaussian_filter(np.asarray(volume, np.float32), (0, 1.5, 1.5))
    return filled_body(v > frac * np.percentile(v, 99.5))


def filled_body(mask: np.ndarray) -> np.ndarray:
    """Holes filled per slice, then the largest 3-D component: the body of a thresholded series."""
    m = np.stack([ndimage.binary_fill_holes(s) for s in mask])
    lab, n = ndimage.label(m)
    if n > 1:
        sizes = ndimage.sum(m, lab, range(1, n + 1))
        m = lab == (1 + int(np.argmax(sizes)))
    return m


# --- scoring --------------------------------------------------------------------------------
def score_case(truth01: np.ndarray, preds01: dict[str, np.ndarray], mask: np.ndarray) -> dict:
    """Per-slice SSIM/PSNR lists and per-series errors, per method and convention."""
    out: dict = {}
    for method, pred in preds01.items():
        res = {}
        for conv in CONVENTIONS:
            ss, ps = [], []
            for k in range(truth01.shape[0]):
                mk = mask[k] if conv == "body" else None
                if mk is not None and not mk.any():
                    continue
                ss.append(ssim(pred[k], truth01[k], 1.0, mk))
                ps.append(psnr(pred[k], truth01[k], 1.0, mk))
            res[conv] = {"ssim": ss, "psnr": ps,
                         **series_errors(pred, truth01, mask if conv == "body" else None)}
        out[method] = res
    return out


def summarise(cases: list[dict]) -> dict:
    """mean ± sd: SSIM/PSNR over all slices, MAE/MSE/r over series (as the paper does)."""
    table: dict = {}
    for method in cases[0]["scores"]:
        table[method] = {}
        for conv in CONVENTIONS:
            slices_ss = np.concatenate([c["scores"][method][conv]["ssim"] for c in cases])
            slices_ps = np.concatenate([c["scores"][method][conv]["psnr"] for c in cases])
            row = {"ssim": [float(slices_ss.mean()), float(slices_ss.std())],
                   "psnr": [float(slices_ps.mean()), float(slices_ps.std())]}
            for k in ("mae", "mse", "r"):
                v = np.array([c["scores"][method][conv][k] for c in cases])
                row[k] = [float(v.mean()), float(v.std())]
            table[method][conv] = row
    return table


def conventions(body: str) -> dict:
    """The card's `conventions`: the figures on whole images, and within `body` (what mask)."""
    return {"unit": "per-slice min-max to [0,1], data_range 1, whole image",
            "body": f"same images, metrics restricted to {body}"}


HIGHER_IS_BETTER = {"ssim": True, "psnr": True, "r": True, "mae": False, "mse": False}


def shortfalls(table: dict, baselines: Iterable[str], model: str = "model") -> list[str]:
    """Every (convention, metric, baseline) where the model's mean does not beat the
    baseline's, as 'body ssim vs identity: 0.898 <= 0.940'; empty when it beats them all."""
    out = []
    for base in baselines:
        for conv, row in table[model].items():
            for metric, higher in HIGHER_IS_BETTER.items():
                m, b = row[metric][0], table[base][conv][metric][0]
                if (m <= b) if higher else (m >= b):
                    out.append(f"{conv} {metric} vs {base}: {m:.4g} {'<=' if higher else '>='} {b:.4g}")
    return out


def table_row(r: dict) -> str:
    """One convention's mean ± sd cells: SSIM | PSNR | MAE | MSE | r."""
    return (f"{r['ssim'][0]:.3f} ± {r['ssim'][1]:.3f} | {r['psnr'][0]:.2f} ± {r['psnr'][1]:.2f} | "
            f"{r['mae'][0]:.4f} ± {r['mae'][1]:.4f} | {r['mse'][0]:.4f} ± {r['mse'][1]:.4f} | "
            f"{r['r'][0]:.3f} ± {r['r'][1]:.3f}")


# --- panels and reports ----------------------------------------------------------------------
def save_panel(path: Path, tiles: list[tuple[str, np.ndarray]], title: str = "") -> Path:
    """Labelled tiles ([0, 1] images) side by side as an 8-bit PNG."""
    from PIL import Image, ImageDraw

    img = np.concatenate([(np.clip(t, 0, 1) * 255).astype(np.uint8) for _, t in tiles], 1)
    im = Image.fromarray(img)
    draw = ImageDraw.Draw(im)
    w = tiles[0][1].shape[1]
    for i, (label, _) in enumerate(tiles):
        draw.text((i * w + 4, 4), label, fill=255)
    if title:
        draw.text((4, tiles[0][1].shape[0] - 14), title, fill=255)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)
    return path


def save_grid(path: Path, rows: list[list[tuple[str, np.ndarray]]], title: str) -> Path:
    """Rows of labelled tiles stacked into one PNG (the title on the first row)."""
    from PIL import Image

    tmp = [save_panel(path.with_suffix(f".row{i}.png"), r, title if i == 0 else "") for i, r in enumerate(rows)]
    ims = [np.asarray(Image.open(p)) for p in tmp]
    Image.fromarray(np.concatenate(ims, 0)).save(path)
    for p in tmp:
        p.unlink()
    return path


def phantom_main(argv: list[str] | None, *, description: str, task: str, test_subjects: int, slices: int,
                 out: str, score: Callable[..., dict], report: Callable[[dict], str], per: str | None = None) -> int:
    """`python -m models.<family>.evaluate`: the task's model from --models-dir on the family's
    phantom test subjects; `score(model, n, slices, size, panels_dir)` -> result,
    `report(result)` -> the table; writes metrics.json, table.md and panels under --out."""
    import argparse

    from dicom_synth.multicontrast import load_synthesis_model
    from dicom_synth.registry import load_card

    p = argparse.ArgumentParser(description=description)
    p.add_argument("--test-subjects", type=int, default=test_subjects, help=per)
    p.add_argument("--slices", type=int, default=slices)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--models-dir", type=Path, default=None)
    p.add_argument("--out", type=Path, default=Path(out))
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args(argv)
    model = load_synthesis_model(load_card(task, a.models_dir), threads=a.threads)
    res = score(model, a.test_subjects, a.slices, a.size, a.out / "panels")
    text = report(res)
    write_report(a.out, res, text)
    print(text)
    return 0


def write_report(out_dir: Path, result: dict, text: str) -> Path:
    """`metrics.json` (everything) and `table.md` (the text) in out_dir; returns out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(result, indent=1))
    (out_dir / "table.md").write_text(text + "\n")
    return out_dir
