"""Evaluate the series classifier on the phantom test split: confusion matrices and
per-class accuracy for headers only, pixels only and fused, through the service's own
code path (`classify_series`, ONNX Runtime), with seed 001's figures beside them.

    nice python -m models.classifier.evaluate --per-class 40 [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from dicom_synth.classify import LABELS, classify_series
from dicom_synth.classify.pixelmodel import load_pixel_model
from models.classifier.phantom import make_series, split_seeds

# Seed 001 (ResNet, radiologists' labels): per-class accuracy where the paper gives one.
PAPER = {
    "breast_t2": 0.849, "breast_t2_fs": 1.0, "breast_adc": 1.0,
    "breast_dwi_low_b": 1.0, "breast_dwi_high_b": 1.0,  # header program, 100 % agreement
    "breast_dce_pre": 0.897, "breast_dce_early": 0.392, "breast_dce_late": 0.957,
}
PAPER_OVERALL = "sequence model 92.0 %, phase model 90.4 %"
SHORT = {lbl: lbl.replace("breast_", "b.").replace("brain_", "br.").replace("_", "")[:9] for lbl in LABELS}


def confusion(truth: list[str], pred: list[str]) -> np.ndarray:
    m = np.zeros((len(LABELS), len(LABELS)), int)
    for t, p in zip(truth, pred, strict=True):
        m[LABELS.index(t), LABELS.index(p)] += 1
    return m


def report(name: str, m: np.ndarray, out=sys.stdout) -> dict:
    per_class = {lbl: float(m[i, i] / max(m[i].sum(), 1)) for i, lbl in enumerate(LABELS)}
    overall = float(np.trace(m) / max(m.sum(), 1))
    print(f"\n== {name}: overall {overall:.4f}, worst class {min(per_class.values()):.4f}", file=out)
    print(" " * 18 + " ".join(f"{SHORT[lbl]:>9}" for lbl in LABELS), file=out)
    for i, lbl in enumerate(LABELS):
        paper = f"  (seed 001: {PAPER[lbl]:.3f})" if lbl in PAPER else ""
        cells = " ".join(f"{v:>9d}" if v else f"{'.':>9}" for v in m[i])
        print(f"{lbl:>18} {cells}   acc {per_class[lbl]:.3f}{paper}", file=out)
    return {"overall": round(overall, 4), "per_class": {k: round(v, 4) for k, v in per_class.items()},
            "confusion": m.tolist()}


def evaluate(per_class: int, n_slices: int = 3, out=sys.stdout) -> dict:
    model = load_pixel_model()
    truth, by_headers, by_pixels, fused, confidences = [], [], [], [], []
    t0 = time.time()
    for seed in split_seeds("test", per_class):
        for label in LABELS:
            s = make_series(label, seed, n_slices=n_slices, split="test")
            truth.append(label)
            by_headers.append(classify_series(s.headers, None, use_pixel_model=False).label)
            if model is not None:
                probs = model.predict(s.volume, is_ct=s.headers[0].Modality == "CT")
                by_pixels.append(max(probs, key=lambda k: probs[k]))
            result = classify_series(s.headers, s.volume)
            fused.append(result.label)
            confidences.append(result.confidence)
    results = {"series": len(truth), "seconds": round(time.time() - t0, 1), "paper_overall": PAPER_OVERALL,
               "headers_only": report("headers only (rules.yaml)", confusion(truth, by_headers), out)}
    if by_pixels:
        results["pixels_only"] = report("pixels only (ONNX ResNet, argmax)", confusion(truth, by_pixels), out)
    results["fused"] = report("fused (classify_series)", confusion(truth, fused), out)
    wrong_routes = sum(1 for t, p in zip(truth, fused, strict=True) if p != t and p != "unknown")
    results["fused_confident_wrong"] = wrong_routes
    results["fused_abstained"] = sum(1 for t, p in zip(truth, fused, strict=True) if p == "unknown" and t != "unknown")
    print(f"\nfused: {wrong_routes} wrong labels (not unknown), {results['fused_abstained']} abstentions "
          f"(unknown) of {len(truth)} series; seed 001: {PAPER_OVERALL}", file=out)
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--per-class", type=int, default=40)
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args(argv)
    results = evaluate(a.per_class)
    if a.json:
        a.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
