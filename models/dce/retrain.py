"""Retrain the DCE phase-1 model on a hospital's PACS export (`python -m models retrain
dce_phase1 EXPORT_DIR --out MODELS_DIR`): pair each study's non-contrast T1 with its first
post-contrast phase (`models.dce.pairs`, roles from the service's series classifier),
split the studies by patient, train Pix2Pix on the training patients (validating on the
validation patients), score the held-out patients with seed 000's metrics against the
identity and a linear map fitted on the training patients, export ONNX with its card and
training domain."""

from __future__ import annotations

import dataclasses
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np

from dicom_synth.inference import SynthesisModel
from dicom_synth.registry import load_card
from models.common import export as common
from models.common.evaluate import conventions, shortfalls, write_report
from models.common.retrain import SPLIT_NOTE, NotEnoughData, command, install, split_by_patient, workspace
from models.dce import evaluate as ev
from models.dce.export import TASK, build_card, export_onnx, feature_module, parity
from models.dce.pairs import PairResult, build_pairs, classifier_roles
from models.dce.train import CONFIGS, fit_pairs, load_generator, npz_pairs

MIN_SERIES_FOR_OWN_DOMAIN = 10  # fewer input series: the domain block comes from the phantom


def pair_export(export_dir: Path, pairs_dir: Path, log: Callable[[str], None] = print) -> list[PairResult]:
    """Every study under export_dir paired (or refused, with the reason)."""
    results = build_pairs([Path(export_dir)], pairs_dir, role_fn=classifier_roles)
    for r in results:
        log(f"{r.study_uid}: " + (f"refused: {r.refused}" if r.refused else
                                  f"{r.source_description!r} + {r.target_description!r}, {r.n_slices} slices"))
    if not any(r.refused is None for r in results):
        reasons = sorted({r.refused for r in results if r.refused})
        raise NotEnoughData("nothing pairable under " + str(export_dir) + ": "
                            + ("; ".join(reasons) if reasons else "no DICOM study found")
                            + ". Each study needs a non-contrast, non-fat-suppressed T1 and a post-contrast "
                              "(DCE) series in one frame of reference.")
    return results


def _split_folders(results: list[PairResult], pairs_dir: Path) -> dict[str, Path]:
    """The paired studies' .npz files moved into pairs_dir/<split>/, split by patient."""
    by_patient: dict[str, list[str]] = defaultdict(list)
    for r in results:
        if r.refused is None:
            by_patient[r.patient_id or r.study_uid].append(r.study_uid)
    splits = split_by_patient(by_patient)
    folders = {}
    for split, studies in splits.items():
        folders[split] = pairs_dir / split
        folders[split].mkdir(parents=True, exist_ok=True)
        for uid in studies:
            (pairs_dir / f"{uid}.npz").rename(folders[split] / f"{uid}.npz")
    return folders


def training_data(results: list[PairResult], folders: dict[str, Path], export_dir: Path) -> dict:
    paired = [r for r in results if r.refused is None]
    split_of = {p.stem: split for split, f in folders.items() for p in f.glob("*.npz")}
    return {
        "kind": "your studies: non-contrast T1 paired with the first post-contrast phase of the same study",
        "export": str(export_dir),
        "studies_found": len(results), "studies_paired": len(paired),
        "refused": [{"study": r.study_uid, "why": r.refused} for r in results if r.refused],
        "patients": {s: len({r.patient_id for r in paired if split_of.get(r.study_uid) == s}) for s in folders},
        "studies": {s: sum(v == s for v in split_of.values()) for s in folders},
        "slices": {s: int(sum(r.n_slices for r in paired if split_of.get(r.study_uid) == s)) for s in folders},
        "resampled_studies": sum(r.resampled for r in paired),
        "series": [{"study": r.study_uid, "split": split_of.get(r.study_uid), "input": r.source_description,
                    "target": r.target_description} for r in paired],
        "split": SPLIT_NOTE,
    }


def retrain(export_dir: Path, out_dir: Path, config: str = "small", run_dir: Path | None = None,
            version: str = "1.0.0", log: Callable[[str], None] = print) -> dict:
    """Pair, split, train, evaluate, export and install the model (`models.common.retrain`)."""
    cfg = CONFIGS[config]
    with workspace("dce", run_dir) as (tmp, run_dir, t0):
        pairs_dir = tmp / "pairs"
        results = pair_export(export_dir, pairs_dir, log)
        folders = _split_folders(results, pairs_dir)
        data = training_data(results, folders, export_dir)
        train_xy, val_xy = npz_pairs(folders["train"]), npz_pairs(folders["val"])
        for need, (xs, _) in (("training", train_xy), ("validation", val_xy)):
            side = min(xs.shape[1:])
            if side % cfg.net.spatial_multiple or side < cfg.size:
                raise NotEnoughData(f"{need} slices are {xs.shape[1]}x{xs.shape[2]}: config {config!r} needs "
                                    f"sides of at least {cfg.size}, multiples of {cfg.net.spatial_multiple}")
        cfg = dataclasses.replace(cfg, n_train=len(data["series"]), n_val=data["studies"]["val"])
        fit_pairs(cfg, run_dir, train_xy, val_xy, data_seconds=time.time() - t0)
        g, cfg, ckpt = load_generator(run_dir / "best.pt")
        history = common.run_history(run_dir / "latest.pt", ckpt)
        stage = run_dir / "weights"
        onnx_path = export_onnx(g, stage / f"{TASK}.onnx")
        delta = parity(g, onnx_path, val_xy[0][:2, None].astype(np.float32))
        common.require_parity(delta)
        common.write_card(build_card(TASK, onnx_path, cfg, version=version, training_data=data, history=history),
                          stage, TASK)  # provisional: the evaluation runs the file through the registry
        model = SynthesisModel.from_card(load_card(TASK, stage))
        t_eval = time.time()
        res = ev.evaluate(ev.npz_cases(folders["test"]), model, ev.fit_linear_on_npz(folders["train"]),
                          panels_dir=Path(out_dir) / f"{TASK}.retrain" / "panels")
        metrics = {"dataset": f"held-out patients: {data['patients']['test']} patient(s), "
                              f"{res['n_series']} studies, {res['n_slices']} slices",
                   "conventions": conventions("the body mask of the input"),
                   "table": res["table"], "linear_baseline": res["linear"], "n_series": res["n_series"],
                   "n_slices": res["n_slices"], "shortfalls": shortfalls(res["table"], ("identity", "linear"))}
        card = build_card(TASK, onnx_path, cfg, version=version, metrics=metrics, training_data=data,
                          history=history)
        card["export_parity_max_abs"] = delta
        card["build"] = common.build_record(command(TASK, export_dir, out_dir, config), t0, t_eval, history)
        card_path = common.write_card(card, stage, TASK)
        own = len(data["series"]) >= MIN_SERIES_FOR_OWN_DOMAIN
        text = ev.format_table(res["table"], res["n_series"], res["n_slices"])
        write_report(Path(out_dir) / f"{TASK}.retrain", res, text)
        card = common.add_domain(card_path, common.feature_tensor(onnx_path, g, feature_module(g)),
                                 None if own else common.domain_counts(config),
                                 data=Path(export_dir) if own else None, log=log)
        log(text)
        install(stage, out_dir, TASK)
    return card
