"""Retrain the series classifier's pixel network on a hospital's labelled series (`python -m
models retrain series_classifier EXPORT_DIR --out MODELS_DIR [--labels labels.csv]`): the
labels come from folders named after the classes (EXPORT_DIR/<label>/..., any files and
nesting below) or from a CSV (`series_instance_uid,label` or `path,label` rows, a path
relative to EXPORT_DIR labelling every series under it); the patients are split, the
training patients' series join the phantom's training split (repeated `real_repeat` times)
and the validation patients' its validation split (best epoch, temperature); the held-out
patients' series are classified by the header rules alone (the baseline), the new network
alone and both fused, as the service does; the ONNX file and its card (data summary,
metrics, domain) are installed into MODELS_DIR only when all of that succeeded. The header
rules stay in `dicom_synth/classify/rules.yaml`: they are edited, not trained."""

from __future__ import annotations

import csv
import io
import re
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from dicom_synth.classify import LABELS, classify_series
from dicom_synth.classify.pixelmodel import PixelModel
from dicom_synth.series import group_series
from models.classifier.evaluate import confusion, report
from models.classifier.realdata import LabelledSet, _stack, read_input
from models.classifier.train import CONFIGS, NAME, build_card, export, fit, parity
from models.common import export as common
from models.common.evaluate import write_report
from models.common.retrain import SPLIT_NOTE, NotEnoughData, command, gather, install, split_by_patient

MIN_SERIES_FOR_OWN_DOMAIN = 30  # fewer labelled series: the domain block comes from the phantom
_UID = re.compile(r"^[0-9]+(\.[0-9]+)+$")


@dataclass
class Labelled:
    uid: str
    label: str
    patient: str
    description: str
    files: list[Path]
    x: np.ndarray = field(repr=False)  # (k, 2, S, S) float16, as the service preprocesses it
    slices: list = field(default_factory=list, repr=False)
    volume: np.ndarray | None = field(default=None, repr=False)


def unknown_labels(names: set[str]) -> None:
    bad = sorted(names - set(LABELS))
    if bad:
        verb = "is not a class" if len(bad) == 1 else "are not classes"
        raise NotEnoughData(f"{', '.join(repr(b) for b in bad)} {verb} of the series classifier; "
                            f"known: {', '.join(LABELS)}")


def read_labels_csv(path: Path, export_dir: Path) -> tuple[dict[str, str], list[tuple[Path, str]]]:
    """{series UID: label} and [(folder or file, label)] from the CSV (a header row is optional)."""
    by_uid, by_path = {}, []
    with open(path, newline="", encoding="utf-8-sig") as fh:
        for row in csv.reader(fh):
            if len(row) < 2 or row[0].strip().lower() in ("series_instance_uid", "path", ""):
                continue
            key, label = row[0].strip(), row[1].strip()
            if _UID.match(key):
                by_uid[key] = label
            else:
                p = Path(key)
                by_path.append(((p if p.is_absolute() else Path(export_dir) / p).resolve(), label))
    unknown_labels(set(by_uid.values()) | {lbl for _, lbl in by_path})
    return by_uid, by_path


def label_of(files: list[Path], uid: str, export_dir: Path, csv_labels) -> str | None:
    """The series' label: from the CSV, else from its first folder under export_dir."""
    if csv_labels is not None:
        by_uid, by_path = csv_labels
        first = Path(files[0]).resolve()
        return by_uid.get(uid) or next((lbl for p, lbl in by_path if first == p or p in first.parents), None)
    parts = Path(files[0]).resolve().relative_to(Path(export_dir).resolve()).parts
    return parts[0] if len(parts) > 1 and parts[0] in LABELS else None


def find_labelled(export_dir: Path, labels_csv: Path | None, log: Callable[[str], None] = print
                  ) -> tuple[list[Labelled], dict]:
    """Every labelled series under export_dir, preprocessed; and what was left out, why."""
    export_dir = Path(export_dir)
    csv_labels = read_labels_csv(labels_csv, export_dir) if labels_csv else None
    folders = {p.name for p in export_dir.iterdir() if p.is_dir()}
    if csv_labels is None and folders & set(LABELS):
        unknown_labels(folders)
    found, skipped, unlabelled = [], [], 0
    for sf in group_series([export_dir]):
        label = label_of(sf.files, sf.series_instance_uid, export_dir, csv_labels)
        if label is None:
            unlabelled += 1
            continue
        try:
            loaded, x = read_input(sf)
        except Exception as exc:  # no pixels, undecodable: say so, keep going
            skipped.append(f"{sf.series_instance_uid}: {exc}")
            continue
        patient = str(loaded.slices[0].get("PatientID", "") or sf.study_instance_uid)
        found.append(Labelled(sf.series_instance_uid, label, patient, sf.series_description, list(sf.files), x,
                              loaded.slices, loaded.volume))
        log(f"{sf.series_instance_uid} {sf.series_description!r}: {label} (patient {patient})")
    if not found:
        raise NotEnoughData(f"no labelled image series under {export_dir}: put each class's series under "
                            "EXPORT_DIR/<class>/ or name them in --labels (series_instance_uid,label or path,label)"
                            + (f"; {len(skipped)} unreadable" if skipped else "")
                            + ("" if csv_labels else f"; no folder there is named after a class: {sorted(folders)}"))
    return found, {"unlabelled_series": unlabelled, "unreadable": skipped}


def labelled_set(splits: dict[str, list[Labelled]]) -> LabelledSet:
    """The training and validation patients' series as the trainer's real set (series ids
    well away from the phantom's)."""
    def items(split: str) -> list[tuple[np.ndarray, int]]:
        return [(s.x, LABELS.index(s.label)) for s in splits[split]]

    counts: dict[str, int] = defaultdict(int)
    for s in splits["train"] + splits["val"]:
        counts[s.label] += 1
    return LabelledSet(_stack(items("train"), 10_000_000), _stack(items("val"), 10_000_000 + len(splits["train"])),
                       dict(counts))


def evaluate(test: list[Labelled], onnx_path: Path) -> dict:
    """Headers only (the baseline), the new network alone (argmax) and fused (`classify_series`
    with the new network) on the held-out series: overall and per-class accuracy."""
    pixel = PixelModel(onnx_path)
    truth = [s.label for s in test]
    methods: dict[str, list[str]] = {"headers_only": [], "pixels_only": [], "fused": []}
    for s in test:
        methods["headers_only"].append(classify_series(s.slices, None, use_pixel_model=False).label)
        is_ct = str(s.slices[0].get("Modality", "")).upper() == "CT"
        probs = pixel.predict(s.volume, is_ct)
        methods["pixels_only"].append(max(probs, key=lambda k: probs[k]))
        methods["fused"].append(classify_series(s.slices, s.volume, model_path=onnx_path).label)
    out, text = {}, io.StringIO()
    present = sorted(set(truth), key=LABELS.index)
    for name, pred in methods.items():
        r = report(name, confusion(truth, pred), out=text)
        out[name] = {"accuracy": r["overall"], "per_class": {k: r["per_class"][k] for k in present},
                     "confusion": r["confusion"]}
    out["series"] = [{"series": s.uid, "label": s.label, **{m: p[i] for m, p in methods.items()}}
                     for i, s in enumerate(test)]
    out["shortfalls"] = [f"{m} accuracy {out[m]['accuracy']:.3f} <= headers_only {out['headers_only']['accuracy']:.3f}"
                         for m in ("fused",) if out[m]["accuracy"] <= out["headers_only"]["accuracy"]
                         and out["headers_only"]["accuracy"] < 1.0]
    return {"metrics": out, "text": text.getvalue()}


def retrain(export_dir: Path, out_dir: Path, config: str = "small", run_dir: Path | None = None,
            version: str = "1.0.0", labels: Path | None = None, log: Callable[[str], None] = print) -> dict:
    """Label, split, train, evaluate, export and install the network; the card as written.
    Raises NotEnoughData (writing nothing into out_dir) when the export cannot train it."""
    t0 = time.time()
    found, left_out = find_labelled(export_dir, labels, log)
    by_patient: dict[str, list[str]] = defaultdict(list)
    for s in found:
        by_patient[s.patient].append(s.uid)
    of = {s.uid: s for s in found}
    splits = {k: [of[u] for u in uids] for k, uids in split_by_patient(by_patient).items()}
    cfg = replace(CONFIGS[config], real=None)
    with tempfile.TemporaryDirectory(prefix="retrain-classifier-") as tmp:
        stage = Path(run_dir) if run_dir else Path(tmp) / "weights"
        f = fit(cfg, labelled_set(splits))
        onnx_path = export(f.model, stage / f"{NAME}.onnx")
        delta = parity(f.model, onnx_path, f.x_val)
        common.require_parity(delta)
        card = build_card(onnx_path, cfg, f, delta, time.time() - f.started)
        card_path = common.write_card(card, stage, NAME)  # the evaluation reads the temperature from it
        t_eval = time.time()
        res = evaluate(splits["test"], onnx_path)
        card["version"] = version
        card["training_data"] = {
            **card["training_data"],
            "kind": "the phantom's series of every class, and your labelled series",
            "export": str(export_dir), "labels": str(labels) if labels else "folders named after the classes",
            "patients": {k: len({s.patient for s in v}) for k, v in splits.items()},
            "labelled_series": {k: len(v) for k, v in splits.items()},
            "per_class": {k: {lbl: sum(s.label == lbl for s in v) for lbl in sorted({s.label for s in found})}
                          for k, v in splits.items()},
            "series": [{"series": s.uid, "split": k, "label": s.label, "description": s.description}
                       for k, v in splits.items() for s in v],
            **left_out, "split": SPLIT_NOTE}
        held_out = len({s.patient for s in splits["test"]})
        card["metrics"] = {**card["metrics"], "dataset": f"held-out patients: {held_out} patient(s), "
                           f"{len(splits['test'])} labelled series", **res["metrics"]}
        rerun = command(NAME, export_dir, out_dir, config, *(("--labels", str(labels)) if labels else ()))
        card["build"] = common.build_record(rerun, t0, t_eval, {"train_seconds": round(time.time() - f.started, 1)})
        common.write_card(card, stage, NAME)
        write_report(Path(out_dir) / f"{NAME}.retrain", res["metrics"], res["text"])
        own = len(found) >= MIN_SERIES_FOR_OWN_DOMAIN
        card = common.add_domain(card_path, None, None if own else common.domain_counts(config),
                                 data=gather({f"{s.label}/{s.uid}": s.files for s in found}, Path(tmp) / "domain")
                                 if own else None, log=log)
        log(res["text"])
        install(stage, out_dir, NAME)
    return card
