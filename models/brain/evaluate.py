"""Evaluate brain contrast completion on phantom test subjects, with the DCE model's
conventions (`models.dce.evaluate`): SSIM and PSNR per slice, MAE, MSE and Pearson r per
series, on [0, 1] per-slice min-max images ("unit") and inside the head ("body", the mask
made from the *input* series, so every method is scored on the same voxels).

Every source contrast is translated to each of the other three (12 directions), through
the exported ONNX file and `dicom_synth.multicontrast` (what the service runs). Baselines:
- identity:  the input contrast itself, as a stand-in for the missing one;
- histmatch: the input's head-voxel histogram matched to the target contrast's histogram,
             learnt from *training* subjects (a monotone intensity map).

    python -m models.brain.evaluate --test-subjects 4 --out runs/brain_eval
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dicom_synth import intensity
from dicom_synth.multicontrast import normalise
from models.brain.phantom import CONTRASTS, generate_subject, split_seeds
from models.common.evaluate import (
    body_mask,
    phantom_main,
    save_grid,
    score_case,
    shortfalls,
    summarise,
    table_row,
    unit_slices,
)
from models.guided_filter import GuidedFilter

QUANTILES = np.linspace(0, 100, 101)


@dataclass(frozen=True)
class HistogramMatch:
    """Per-contrast reference quantiles of head voxels ([0, 1] images) from training data."""

    reference: dict[str, np.ndarray]

    def __call__(self, x01: np.ndarray, mask: np.ndarray, target: str) -> np.ndarray:
        src_q = np.percentile(x01[mask], QUANTILES)
        src_q, idx = np.unique(src_q, return_index=True)
        out = np.interp(x01, src_q, self.reference[target][idx])
        return np.where(mask, out, 0.0).astype(np.float32)


def histmatch_from(studies: Iterable[dict[str, np.ndarray]]) -> HistogramMatch:
    """Reference histograms of the head voxels of training studies ({contrast: volume})."""
    vals: dict[str, list[np.ndarray]] = {c: [] for c in CONTRASTS}
    for images in studies:
        for c in CONTRASTS:
            vals[c].append(unit_slices(images[c])[body_mask(images[c])])
    return HistogramMatch({c: np.percentile(np.concatenate(v), QUANTILES) for c, v in vals.items()})


def fit_histmatch(n_subjects: int = 6, n_slices: int = 12, size: int = 128) -> HistogramMatch:
    """Reference histograms from phantom training subjects (never test ones)."""
    return histmatch_from(generate_subject(seed, n_slices=n_slices, size=size).images
                          for seed in split_seeds("train", n_subjects))


def phantom_cases(n: int, n_slices: int = 16, size: int = 128) -> Iterable[dict]:
    for seed in split_seeds("test", n):
        s = generate_subject(seed, n_slices=n_slices, size=size)
        yield {"id": f"brain-{seed}", "images": s.images, "lesion": s.tumour_fraction > 0.5,
               "focus": s.tumour_fraction.sum(axis=(1, 2)) + 0.3 * s.oedema_fraction.sum(axis=(1, 2))}


def evaluate(cases: Iterable[dict], model, histmatch: HistogramMatch, panels_dir: Path | None = None) -> dict:
    """Score every direction of every case; pooled and per-direction tables. When the card
    names a post filter, `identity_filtered` (the input through that same filter) is added
    as a reference."""
    post_filter = GuidedFilter.from_card(model.card.extra.get("post_filter"))
    per_dir: dict[str, list[dict]] = {}
    pooled: list[dict] = []
    lesion: dict[str, dict[str, list[float]]] = {}  # direction -> method -> [sum |error|, pixels]
    seconds, n_outputs = 0.0, 0
    ids = []
    for case in cases:
        ids.append(case["id"])
        imgs01 = {c: unit_slices(v) for c, v in case["images"].items()}
        focus = case.get("focus")
        k = int(np.argmax(focus)) if focus is not None and np.max(focus) > 0 else \
            len(case["images"][CONTRASTS[0]]) // 2
        rows = []
        for src in CONTRASTS:
            x = case["images"][src]
            mask = body_mask(x)
            t = time.perf_counter()
            outs = model.run(x, source_label=f"brain_{src}")
            seconds += time.perf_counter() - t
            n_outputs += x.shape[0] * len(outs)
            targets = [c for c in CONTRASTS if c != src]
            row = [(f"input {src}", imgs01[src][k])]
            for tgt, out in zip(targets, outs, strict=True):
                p01 = (intensity.from_stored(out.pixels, model.card.output_mapping) + 1.0) / 2.0
                preds = {"model": p01, "identity": imgs01[src], "histmatch": histmatch(imgs01[src], mask, tgt)}
                if post_filter is not None:
                    preds["identity_filtered"] = post_filter.smooth(imgs01[src], normalise(x, model.card.normalisation))
                rec = {"id": case["id"], "direction": f"{src}->{tgt}", "n_slices": int(x.shape[0]),
                       "scores": score_case(imgs01[tgt], preds, mask)}
                per_dir.setdefault(rec["direction"], []).append(rec)
                if case.get("lesion") is not None and case["lesion"].any():
                    for method, p in preds.items():
                        acc = lesion.setdefault(rec["direction"], {}).setdefault(method, [0.0, 0])
                        acc[0] += float(np.abs(p - imgs01[tgt])[case["lesion"]].sum())
                        acc[1] += int(case["lesion"].sum())
                pooled.append(rec)
                row += [(f"{tgt} true", imgs01[tgt][k]), (f"{tgt} synth", p01[k])]
            rows.append(row)
        if panels_dir is not None:
            save_grid(Path(panels_dir) / f"{case['id']}.png", rows, f"{case['id']} slice {k + 1}")
    return {"cases": ids, "table": summarise(pooled), "directions": {d: summarise(v) for d, v in per_dir.items()},
            "lesion_mae": {d: {m: v[0] / max(v[1], 1) for m, v in ms.items()} for d, ms in lesion.items()},
            "n_series": len(ids), "n_directions": len(per_dir), "n_scored_series": len(pooled),
            "onnx_seconds_per_output_slice": round(seconds / max(n_outputs, 1), 4)}


def format_tables(res: dict) -> str:
    lines = [f"{res['n_series']} subjects x {res['n_directions']} directions ({res['n_scored_series']} series); "
             "mean ± sd (SSIM/PSNR per slice, MAE/MSE/r per series), all directions pooled",
             "| method | convention | SSIM | PSNR dB | MAE | MSE | Pearson r |", "|---|---|---|---|---|---|---|"]
    for method, convs in res["table"].items():
        for conv, r in convs.items():
            lines.append(f"| {method} | {conv} | {table_row(r)} |")
    methods = [m for m in ("model", "identity", "histmatch", "identity_filtered") if m in res["table"]]
    header = ["| direction | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
    lines += ["", "Per direction, body convention (SSIM / PSNR dB / MAE)"
              + ("; identity_filtered is the input through the model's input-guided filter (reference)"
                 if "identity_filtered" in methods else ""), *header]
    for d, t in sorted(res["directions"].items()):
        cells = [f"{t[m]['body']['ssim'][0]:.3f} / {t[m]['body']['psnr'][0]:.2f} / {t[m]['body']['mae'][0]:.4f}"
                 for m in methods]
        lines.append(f"| {d} | " + " | ".join(cells) + " |")
    if res.get("lesion_mae"):
        lines += ["", "Inside the tumour (unit images, MAE over all its pixels; what T1c adds is here)", *header]
        for d, ms in sorted(res["lesion_mae"].items()):
            lines.append(f"| {d} | " + " | ".join(f"{ms[m]:.4f}" for m in methods) + " |")
    lines += ["", "Where the model does not beat a baseline (mean, every convention and metric):"]
    misses = [f"- pooled: {m}" for m in shortfalls(res["table"], ("identity", "histmatch"))]
    misses += [f"- {d}: {m}" for d, t in sorted(res["directions"].items())
               for m in shortfalls(t, ("identity", "histmatch"))]
    lines += misses or ["- nowhere"]
    lines.append(f"ONNX Runtime: {res['onnx_seconds_per_output_slice']:.4f} s per synthesized slice")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return phantom_main(argv, description="Evaluate brain contrast completion on phantom test subjects.",
                        task="brain_contrasts", test_subjects=4, slices=16, out="runs/brain_eval", report=format_tables,
                        score=lambda model, n, slices, size, panels: evaluate(
                            phantom_cases(n, slices, size), model, fit_histmatch(), panels_dir=panels))


if __name__ == "__main__":
    raise SystemExit(main())
