"""`dicom-synth classify PATH...`: one JSON line per series found under the paths."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TextIO

from dicom_synth.classify.classifier import classify_series
from dicom_synth.series import group_series, load_series


def _classify_group(group) -> dict:
    try:
        loaded = load_series(group.files, pixels=True)
        result = classify_series(loaded.slices, loaded.volume)
    except Exception as exc:  # no pixels (a non-image object, an undecodable stream): headers only
        try:
            loaded = load_series(group.files, pixels=False)
            result = classify_series(loaded.slices)
        except Exception as exc2:
            from dicom_synth.classify.classifier import Classification

            result = Classification("unknown", 0.0, {"reason": f"cannot read series: {exc2}"}, None)
        result.evidence.setdefault("pixels", f"not used: {exc}")
    return {
        "series_instance_uid": group.series_instance_uid,
        "series_description": group.series_description,
        "label": result.label,
        "confidence": result.confidence,
        "evidence": result.evidence,
        "route": result.route,
    }


def run(paths: list[str], out: TextIO = sys.stdout) -> int:
    """Print one JSON object per series; 0 when at least one series was found, 1 when
    none, 2 when a path does not exist."""
    try:
        groups = group_series(paths)
    except FileNotFoundError as exc:
        print(f"dicom-synth classify: {exc}", file=sys.stderr)
        return 2
    if not groups:
        print("dicom-synth classify: no DICOM series found", file=sys.stderr)
        return 1
    for group in groups:
        out.write(json.dumps(_classify_group(group), sort_keys=False) + "\n")
        out.flush()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dicom-synth classify", description=__doc__)
    parser.add_argument("paths", nargs="+", help="DICOM files or folders (any names, nested)")
    args = parser.parse_args(argv)
    return run(args.paths)


if __name__ == "__main__":
    raise SystemExit(main())
