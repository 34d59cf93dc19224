"""Per-class accuracy of the pixel network on sources it never trained on.

Held out from training, whole: the three sibling phantom families (`models.dce.phantom`,
`models.brain.phantom`, `models.ct.phantom`: other renderers, other anatomy models, other
header writers) and one real collection (`realdata_labels.HELD_OUT_COLLECTION`). The
training recipe (`train.fit`) runs on what is left (the classifier's own phantom) and is
tested, pixels only (argmax of the series' mean slice log-probability), on every held-out
source, with the own phantom's test split beside them for reference. `--onnx` scores a
shipped model on the same sets instead (it may have trained on the families).

    nice python -m models.classifier.heldout --json var/heldout_basic.json
    python -m models.classifier.heldout --onnx models/weights/series_classifier.onnx --json var/heldout_shipped.json
    python -m models.classifier.heldout --report var/heldout_shipped.json var/heldout_basic.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

from dicom_synth.classify.labels import LABELS
from dicom_synth.classify.pixelmodel import preprocess
from models.classifier.data import CACHE, N_SLICES, OWN_FAMILY, VERSION, build_split
from models.classifier.phantom import SIBLINGS, _from_dce_phantom, _from_sibling_phantom, split_seeds
from models.classifier.realdata_labels import HELD_OUT_COLLECTION, load_real_series
from models.classifier.train import TrainConfig, fit, series_logp

FAMILIES = {
    "models.dce.phantom": ("breast_t1_nc", "breast_dce_early"),
    "models.brain.phantom": tuple(lbl for lbl in SIBLINGS if lbl.startswith("brain_")),
    "models.ct.phantom": tuple(lbl for lbl in SIBLINGS if lbl.startswith("ct_")),
}
REAL = f"realdata/{HELD_OUT_COLLECTION}"
Arrays = tuple[np.ndarray, np.ndarray, np.ndarray]


def _family_series(family: str, label: str, seed: int):
    if family == "models.dce.phantom":
        return _from_dce_phantom(label, seed, "test", N_SLICES)
    depth = int(np.random.default_rng([seed, LABELS.index(label)]).choice([3, 5, 6, 8, 10]))
    return _from_sibling_phantom(label, seed, "test", depth, N_SLICES)


def family_test_set(family: str, per_class: int) -> Arrays:
    """Test-split series of one family, preprocessed as the service does it; cached."""
    path = CACHE / f"heldout_{family.split('.')[1]}_{per_class}_v{VERSION}.npz"
    if path.exists():
        z = np.load(path)
        return z["x"], z["y"], z["series"]
    xs, ys, ss = [], [], []
    for seed in split_seeds("test", per_class):
        for label in FAMILIES[family]:
            s = _family_series(family, label, seed)
            x = preprocess(s.volume, s.headers[0].Modality == "CT").astype(np.float16)
            xs.append(x)
            ys += [LABELS.index(label)] * len(x)
            ss += [len(xs)] * len(x)
    out = np.concatenate(xs), np.asarray(ys, np.int64), np.asarray(ss, np.int64)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.savez(path, x=out[0], y=out[1], series=out[2])
    return out


def test_sets(per_class: int, realdata: Path) -> dict[str, Arrays]:
    x, y, s, src = build_split("test", per_class)
    own = src == OWN_FAMILY
    sets = {f"{OWN_FAMILY} (trained on)": (x[own], y[own], s[own])}
    for family in FAMILIES:
        sets[family] = family_test_set(family, per_class)
    sets[REAL] = load_real_series(realdata).arrays(collections={HELD_OUT_COLLECTION})
    return sets


def per_class_accuracy(pred: np.ndarray, truth: np.ndarray) -> dict[str, dict]:
    out = {}
    for k in sorted(set(truth.tolist())):
        hit = pred[truth == k] == k
        out[LABELS[k]] = {"acc": round(float(hit.mean()), 4), "n": int(hit.size)}
    return out


def score(logp_fn, sets: dict[str, Arrays]) -> dict:
    """Per source: per-class accuracy, overall, and for the real series each prediction."""
    results = {}
    for name, (x, y, s) in sets.items():
        logp, ids = logp_fn(x, s)
        truth = np.array([y[s == i][0] for i in ids])
        pred = logp.argmax(1)
        entry = {"overall": round(float((pred == truth).mean()), 4), "series": int(len(ids)),
                 "per_class": per_class_accuracy(pred, truth)}
        if name == REAL:
            entry["predictions"] = [f"{LABELS[t]} -> {LABELS[p]} ({np.exp(lp.max()):.2f})"
                                    for t, p, lp in zip(truth, pred, logp, strict=True)]
        results[name] = entry
    return results


def run(per_class: int, test_per_class: int, epochs: int, realdata: Path, threads: int = 2) -> dict:
    cfg = TrainConfig(per_class=per_class, epochs=epochs, threads=threads, exclude_sources=tuple(FAMILIES))
    t0 = time.time()
    fitted = fit(cfg)
    seconds = time.time() - t0
    sets = test_sets(test_per_class, realdata)
    results = score(lambda x, s: series_logp(fitted.model, x, s), sets)
    return {"recipe": "train.fit", "training": dataclasses.asdict(cfg), "train_seconds": round(seconds),
            "held_out": list(FAMILIES) + [REAL], "results": results}


def onnx_logp(path: Path):
    """series_logp through ONNX Runtime, for a shipped model."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def logp_fn(x: np.ndarray, series: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits = np.concatenate([sess.run(["logits"], {"input": x[i:i + 64].astype(np.float32)})[0]
                                 for i in range(0, len(x), 64)])
        z = logits - logits.max(1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(1, keepdims=True))
        ids = np.unique(series)
        return np.stack([logp[series == i].mean(0) for i in ids]), ids

    return logp_fn


def report(runs: list[dict]) -> str:
    """A markdown table: one row per (source, class), one column per recipe."""
    names = [r["recipe"] for r in runs]
    lines = ["| source | class | n | " + " | ".join(names) + " |", "|---|---|---|" + "---|" * len(runs)]
    for source, entry in runs[0]["results"].items():
        for label, cell in entry["per_class"].items():
            accs = [f"{r['results'][source]['per_class'][label]['acc']:.2f}" for r in runs]
            lines.append(f"| {source} | {label} | {cell['n']} | " + " | ".join(accs) + " |")
        overall = [f"**{r['results'][source]['overall']:.2f}**" for r in runs]
        lines.append(f"| {source} | *all* | {entry['series']} | " + " | ".join(overall) + " |")
    for r, name in zip(runs, names, strict=True):
        lines.append(f"\n{name} ({r['train_seconds']} s training), {REAL}: "
                     + "; ".join(r["results"][REAL].get("predictions", [])))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--per-class", type=int, default=100)
    p.add_argument("--test-per-class", type=int, default=40)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--realdata", type=Path, default=Path("../shared/realdata"), help="holds the held-out collection")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--onnx", type=Path, default=None,
                   help="score a shipped model instead of training one (it may have trained on the families)")
    p.add_argument("--report", type=Path, nargs="+", default=None, help="JSON files of earlier runs: print the table")
    a = p.parse_args(argv)
    if a.report:
        print(report([json.loads(f.read_text()) for f in a.report]))
        return 0
    torch.set_num_threads(a.threads)
    if a.onnx:
        results = score(onnx_logp(a.onnx), test_sets(a.test_per_class, a.realdata))
        out = {"recipe": f"shipped {a.onnx.name}", "training": {"epochs": None, "per_class": None},
               "train_seconds": 0, "held_out": [REAL], "results": results}
    else:
        out = run(a.per_class, a.test_per_class, a.epochs, a.realdata, a.threads)
    text = json.dumps(out, indent=1) + "\n"
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(text)
    print(report([out]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
