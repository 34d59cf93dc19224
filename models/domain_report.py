"""The domain guard's decisions, written to models/DOMAIN.md:

1. every model's pass rate on validation (and held-out test) phantoms of its own domain,
   as its card records them (`python -m models.domain_reference` measured them);
2. the guard's decision and score for every real series in ../shared/realdata, for the
   classifier and for each generator of the series' modality (as if the task were forced);
3. the same for a few test-split phantoms of every family, against every model.

    python -m models.domain_report [--realdata ../shared/realdata] [--out models/DOMAIN.md]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from dicom_synth.domainguard import CLASSIFIER_TASK, DomainVerdict, assess, guard, series_facts
from dicom_synth.registry import load_card
from models.domain_reference import Probe, family_series

REPO = Path(__file__).resolve().parents[1]
GENERATORS = {"MR": ("dce_phase1", "brain_contrasts"), "CT": ("pseudo_mri",)}
ALL_TASKS = (CLASSIFIER_TASK, "dce_phase1", "brain_contrasts", "pseudo_mri")
PHANTOM_COUNTS = {CLASSIFIER_TASK: 2, "dce_phase1": 3, "brain_contrasts": 3, "pseudo_mri": 3}
FAMILY_NAMES = {CLASSIFIER_TASK: "classifier phantom", "dce_phase1": "dce phantom (breast T1)",
                "brain_contrasts": "brain phantom (T1/T2/T1c/FLAIR)", "pseudo_mri": "ct phantom"}


class Models:
    """Every card with its runner, loaded once."""

    def __init__(self, models_dir: Path | None):
        from dicom_synth.classify.pixelmodel import PixelModel
        from dicom_synth.multicontrast import load_synthesis_model

        self.cards = {t: load_card(t, models_dir) for t in ALL_TASKS}
        self.pixel = PixelModel(self.cards[CLASSIFIER_TASK].onnx_path)
        self.runners = {t: load_synthesis_model(self.cards[t], providers=["CPUExecutionProvider"], threads=2)
                        for t in ALL_TASKS if t != CLASSIFIER_TASK}

    def verdict(self, task: str, series, source_label: str | None = None) -> DomainVerdict:
        card = self.cards[task]
        if task == CLASSIFIER_TASK:
            is_ct = series_facts(series.slices)["modality"] == "CT"
            return assess(card, series, self.pixel.predict_with_features(series.volume, is_ct)[1])
        verdict = guard(card, self.runners[task], series, "refuse", source_label=source_label).verdict
        assert verdict is not None
        return verdict


def cell(v: DomainVerdict, classifier: bool = False) -> str:
    """'pass 0.43' / '**refuse** 31.73: sagittal; trained on axial' (the classifier does not
    refuse: outside its domain its pixel verdict is ignored)."""
    score = "-" if v.score is None else f"{v.score:.2f}"
    if v.in_domain:
        return f"{'pixels used' if classifier else 'pass'} {score}"
    why = "; ".join("features unlike training" if d.startswith("image features") else d for d in v.differences)
    return f"**{'pixels ignored' if classifier else 'refuse'}** {score}: {why}"


def real_series(root: Path) -> Iterator[tuple[str, object | None, str]]:
    from dicom_synth.series import group_series, load_series

    for group in group_series([root]):
        name = Path(group.files[0]).resolve().relative_to(root.resolve()).as_posix()
        if len(group.files) > 1:
            name = str(Path(name).parent) + f"/ ({len(group.files)} files)"
        try:
            yield name, load_series(group.files, pixels=True), group.series_description
        except Exception as exc:
            yield name, None, f"{group.series_description} (unreadable: {exc})"


def real_table(models: Models, root: Path) -> list[str]:
    lines = ["| series | description | modality | classifier (pixels) | dce_phase1 | brain_contrasts | pseudo_mri |",
             "|---|---|---|---|---|---|---|"]
    for name, loaded, desc in real_series(root):
        modality = series_facts(loaded.slices)["modality"] if loaded is not None else "?"
        cells = []
        for task in ALL_TASKS:
            if loaded is None or loaded.volume is None:
                cells.append("not scored (no pixels)")
            elif task != CLASSIFIER_TASK and task not in GENERATORS.get(modality, ()):
                cells.append("n/a (modality)")
            elif not np.isfinite(loaded.volume).all() or float(np.ptp(loaded.volume)) == 0.0:  # all zero
                cells.append("not scored (blank pixels)")
            else:
                cells.append(cell(models.verdict(task, loaded), classifier=task == CLASSIFIER_TASK))
        lines.append(f"| `{name}` | {desc.replace('|', '/') or '-'} | {modality} | " + " | ".join(cells) + " |")
    return lines


def phantom_table(models: Models) -> list[str]:
    lines = ["| phantom family (test split) | series | " + " | ".join(ALL_TASKS) + " |",
             "|---|---|" + "---|" * len(ALL_TASKS)]
    with tempfile.TemporaryDirectory(prefix="domain-report-") as tmp:
        for family in ALL_TASKS:
            probes: list[Probe] = list(family_series(family, "test", PHANTOM_COUNTS[family], Path(tmp)))
            cells = []
            for task in ALL_TASKS:
                verdicts = [models.verdict(task, p.series, p.source_label) for p in probes]
                passed = sum(v.in_domain for v in verdicts)
                scores = [v.score for v in verdicts if v.score is not None]
                median = f", median score {np.median(scores):.2f}" if scores else ""
                why = next((d for v in verdicts for d in v.differences), "")
                cells.append(f"{passed}/{len(verdicts)} pass{median}" + (f" (e.g. {why})" if passed < len(verdicts)
                                                                         else ""))
            lines.append(f"| {FAMILY_NAMES[family]} | {len(probes)} | " + " | ".join(cells) + " |")
    return lines


def calibration_table(models: Models) -> list[str]:
    lines = ["| model | feature threshold | validation series passing | held-out test series passing | rule |",
             "|---|---|---|---|---|"]
    for task in ALL_TASKS:
        d = models.cards[task].extra.get("domain") or {}
        if not d:
            lines.append(f"| {task} | no domain block | | | |")
            continue
        cal, test = d["calibration"], d["held_out"]
        lines.append(f"| {task} | {d['features']['threshold']:.3f} | {cal['passed']}/{cal['series']} "
                     f"({cal['pass_rate']:.1%}) | {test['passed']}/{test['series']} ({test['pass_rate']:.1%}) | "
                     f"{d['features']['threshold_rule']} |")
    return lines


def report(models_dir: Path | None, realdata: Path) -> str:
    models = Models(models_dir)
    sections = [
        "# Domain guard: what each model accepts",
        "",
        "Written by `python -m models.domain_report` (do not edit by hand). Each model card's `domain`",
        "block is built by `python -m models.domain_reference --task TASK` (or `--all`) from its family's",
        "phantom: the train split gives the header ranges, intensity ranges and feature reference, the",
        "validation split the threshold, the test split a held-out check. At run time",
        "`SYNTH_DOMAIN_GUARD=refuse` (default) skips an out-of-domain job with the reason, `warn`",
        "synthesizes and says so in ImageComments and the job, `off` does not check. For the classifier,",
        "an out-of-domain image only means its pixel verdict is ignored (the headers decide).",
        "A score is the mean over the probed slices of the squared Mahalanobis distance of the",
        "network's pooled encoder features to its training reference, divided by the feature count.",
        "",
        "## In-domain validation pass rate",
        "",
        *calibration_table(models),
        "",
        f"## Real series in `{realdata.name}/`",
        "",
        "Every generator of the series' modality is scored as if its task were forced. `pass` / `refuse`",
        "and the feature score (threshold in the table above); for the classifier, whether its pixel",
        "verdict is used in the fusion or ignored (the headers then decide alone).",
        "",
        *real_table(models, realdata),
        "",
        "## Phantom families",
        "",
        *phantom_table(models),
        "",
    ]
    return "\n".join(sections)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.domain_report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--realdata", type=Path, default=REPO.parent / "shared" / "realdata")
    parser.add_argument("--models-dir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=REPO / "models" / "DOMAIN.md")
    args = parser.parse_args(argv)
    text = report(args.models_dir, args.realdata)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
