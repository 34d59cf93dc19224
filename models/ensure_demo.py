"""Make sure the demo models exist: `python -m models.ensure_demo [--build]`.

The demo ONNX files and cards are committed under models/weights. Without `--build`
this only checks them (exit 1 when one is missing or its sha256 does not match its
card); with `--build` it retrains the missing ones from the phantoms (needs the
`train` extra; no network).
"""

from __future__ import annotations

import argparse
import importlib
import sys

# task -> module whose main() trains and exports the demo model for it
DEMO_BUILDERS = {
    "dce_phase1": "models.dce.build_demo",
    "pseudo_mri": "models.ct.build_demo",
    "brain_contrasts": "models.brain.build_demo",
    "series_classification": "models.classifier.train",
}


def missing_models() -> dict[str, str]:
    from dicom_synth.registry import load_card

    missing = {}
    for task in DEMO_BUILDERS:
        try:
            load_card(task)
        except Exception as exc:  # unknown, missing file, checksum mismatch
            missing[task] = str(exc)
    return missing


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--build", action="store_true", help="train and export the missing demo models")
    args = ap.parse_args(argv)
    missing = missing_models()
    if not missing:
        print("demo models present:", ", ".join(DEMO_BUILDERS))
        return 0
    for task, why in missing.items():
        print(f"demo model {task}: {why}", file=sys.stderr)
    if not args.build:
        return 1
    for task in missing:
        print(f"building demo model {task} (offline, from the phantom)…", file=sys.stderr)
        importlib.import_module(DEMO_BUILDERS[task]).main([])
    still = missing_models()
    if still:
        print(f"still missing after build: {still}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
