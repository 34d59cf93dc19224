"""`python -m models retrain TASK EXPORT_DIR --out MODELS_DIR [--config tiny|small|full|seed]`:
retrain one model on the studies of a PACS export (any file names and nesting), evaluate
it on held-out patients, and install its ONNX file and card into MODELS_DIR. Too little
data, or nothing pairable, ends with a message that says what is missing, and writes no
model."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from models.common.retrain import NotEnoughData, serve_hint

# task: the family module with `retrain(export_dir, out_dir, config, run_dir)` and `CONFIGS`
RETRAINERS = {"dce_phase1": ("models.dce.retrain", "models.dce.train"),
              "brain_contrasts": ("models.brain.retrain", "models.brain.train"),
              "pseudo_mri": ("models.ct.retrain", "models.ct.train"),
              "series_classifier": ("models.classifier.retrain", "models.classifier.train")}
ALIASES = {"series_classification": "series_classifier"}  # the classifier's task name in its card


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m models", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("retrain", help="retrain one model on your PACS export")
    r.add_argument("task", choices=sorted([*RETRAINERS, *ALIASES]))
    r.add_argument("export_dir", type=Path)
    r.add_argument("--out", type=Path, required=True, help="the models folder to install into")
    r.add_argument("--config", default="small", help="the family's config (tiny: tests; small: CPU; full: GPU)")
    r.add_argument("--run-dir", type=Path, default=None, help="keep checkpoints here (default: a temporary folder)")
    r.add_argument("--labels", type=Path, default=None,
                   help="series_classifier: a CSV of series_instance_uid,label or path,label (else labelled folders)")
    a = p.parse_args(argv)
    a.task = ALIASES.get(a.task, a.task)
    if a.labels is not None and a.task != "series_classifier":
        p.error("--labels is for series_classifier only")
    retrain_module, train_module = RETRAINERS[a.task]
    configs = importlib.import_module(train_module).CONFIGS
    if a.config not in configs:
        p.error(f"{a.task} has no config {a.config!r}; known: {', '.join(sorted(configs))}")
    if not a.export_dir.is_dir():
        p.error(f"{a.export_dir} is not a folder")
    try:
        options = {"labels": a.labels} if a.labels is not None else {}
        card = importlib.import_module(retrain_module).retrain(a.export_dir, a.out, a.config, a.run_dir, **options)
    except NotEnoughData as exc:
        print(f"{a.task}: not retrained: {exc}", file=sys.stderr)
        return 2
    print(f"{a.task}: installed in {a.out} (sha256 {card['sha256'][:12]}); {serve_hint(a.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
