"""Retrain the brain-contrast model on a hospital's PACS export (`python -m models retrain
brain_contrasts EXPORT_DIR --out MODELS_DIR`): register each study's T1, T2, T1c and FLAIR
onto one grid through the patient coordinate system (`models.brain.pairs`, contrasts from
the service's series classifier), split the studies by patient, train seed 002's
conditional translator on the training patients (validating on the validation patients),
score every direction on the held-out patients with seed 002's metrics against the identity
and a histogram match fitted on the training patients, export ONNX with its card and
training domain, and install it into MODELS_DIR only when all of that succeeded."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path

import numpy as np

from dicom_synth.intensity import normalise_slices
from dicom_synth.multicontrast import load_synthesis_model
from dicom_synth.registry import load_card
from models.brain import evaluate as ev
from models.brain.export import TASK, build_card, export_onnx, feature_module, parity, parity_inputs
from models.brain.pairs import StudyResult, build_studies, describe
from models.brain.phantom import CONTRASTS
from models.brain.train import CONFIGS, BrainData, load_translator, prepare, train
from models.common import export as common
from models.common.evaluate import conventions, shortfalls, write_report
from models.common.retrain import SPLIT_NOTE, NotEnoughData, command, install, split_by_patient, workspace

MIN_STUDIES_FOR_OWN_DOMAIN = 10  # fewer registered studies: the domain block comes from the phantom
NEEDS = ("Each study needs a T1, a T2, a T1c and a FLAIR series of the brain (recognised by the series "
         "classifier) in one frame of reference, covering the same slices.")


def register_export(export_dir: Path, studies_dir: Path, multiple: int,
                    log: Callable[[str], None] = print) -> tuple[list[StudyResult], int]:
    """Every study under export_dir registered (or refused, with the reason); the grid side."""
    results, side = build_studies([Path(export_dir)], studies_dir, multiple=multiple)
    for r in results:
        log(describe(r))
    if not any(r.refused is None for r in results):
        reasons = sorted({r.refused for r in results if r.refused})
        raise NotEnoughData(f"nothing pairable under {export_dir}: "
                            + ("; ".join(reasons) if reasons else "no DICOM study found") + ". " + NEEDS)
    return results, side


def split_studies(results: list[StudyResult]) -> dict[str, list[StudyResult]]:
    by_patient: dict[str, list[str]] = defaultdict(list)
    for r in results:
        if r.refused is None:
            by_patient[r.patient_id or r.study_uid].append(r.study_uid)
    of = {r.study_uid: r for r in results}
    return {split: [of[uid] for uid in uids] for split, uids in split_by_patient(by_patient).items()}


def study_images(r: StudyResult) -> dict[str, np.ndarray]:
    """{contrast: (slices, side, side)} in the series' own units, on the study's grid."""
    with np.load(r.npz) as z:
        images = z["images"]
    return {c: images[i] for i, c in enumerate(CONTRASTS)}


def normalised(studies: list[StudyResult]) -> np.ndarray:
    """(slices, contrasts, side, side) per-slice min-max to [-1, 1], as the trainer takes them."""
    return np.concatenate([np.stack([normalise_slices(v) for v in study_images(r).values()], 1)
                           for r in studies])


def brain_data(splits: dict[str, list[StudyResult]], beta: float, mask_expand: int) -> BrainData:
    train_x, val_x = normalised(splits["train"]), normalised(splits["val"])
    structure, background = prepare(train_x, beta, mask_expand)
    _, val_background = prepare(val_x, beta, mask_expand)
    return BrainData(train_x, structure, background, val_x, val_background)


def held_out_cases(studies: list[StudyResult]) -> Iterator[dict]:
    for r in studies:
        yield {"id": r.study_uid, "images": study_images(r)}


def training_data(results: list[StudyResult], splits: dict[str, list[StudyResult]], export_dir: Path,
                  side: int) -> dict:
    split_of = {r.study_uid: s for s, rs in splits.items() for r in rs}
    used = [r for r in results if r.refused is None]
    return {
        "kind": "your studies: T1, T2, T1c and FLAIR of one examination, resampled onto one grid "
                "through the patient coordinate system",
        "export": str(export_dir),
        "studies_found": len(results), "studies_paired": len(used),
        "refused": [{"study": r.study_uid, "why": r.refused} for r in results if r.refused],
        "patients": {s: len({r.patient_id for r in rs}) for s, rs in splits.items()},
        "studies": {s: len(rs) for s, rs in splits.items()},
        "slices": {s: int(sum(r.n_slices for r in rs)) for s, rs in splits.items()},
        "grid": {"matrix": [side, side], "reference": "each study's most axial contrast: its slices and the "
                 "smaller side of its field of view"},
        "resampled_studies": sum(bool(r.resampled) for r in used),
        "series": [{"study": r.study_uid, "split": split_of.get(r.study_uid), "reference": r.reference,
                    "series": r.series, "resampled": r.resampled, "coverage": r.coverage} for r in used],
        "split": SPLIT_NOTE,
    }


def _domain_folder(results: list[StudyResult], export_dir: Path, root: Path) -> Path | None:
    """The registered studies' own series under root/brain_<contrast>/ (hard links, else
    copies), which `models.domain_reference` reads with their source contrast; None (the
    phantom's block) with fewer than MIN_STUDIES_FOR_OWN_DOMAIN studies."""
    from dicom_synth.series import group_series

    used = [r for r in results if r.refused is None]
    if len(used) < MIN_STUDIES_FOR_OWN_DOMAIN:
        return None
    contrast = {uid: c for r in used for c, uid in r.series_uids.items()}
    for sf in group_series([export_dir]):
        if sf.series_instance_uid not in contrast:
            continue
        folder = root / f"brain_{contrast[sf.series_instance_uid]}" / sf.series_instance_uid
        folder.mkdir(parents=True, exist_ok=True)
        for k, f in enumerate(sf.files):
            try:
                os.link(f, folder / f"{k:05d}")
            except OSError:
                shutil.copyfile(f, folder / f"{k:05d}")
    return root


def retrain(export_dir: Path, out_dir: Path, config: str = "small", run_dir: Path | None = None,
            version: str = "1.0.0", log: Callable[[str], None] = print) -> dict:
    """Register, split, train, evaluate, export and install the model (`models.common.retrain`)."""
    cfg = CONFIGS[config]
    with workspace("brain", run_dir) as (tmp, run_dir, t0):
        results, side = register_export(export_dir, tmp / "studies", cfg.net.spatial_multiple, log)
        splits = split_studies(results)
        data = training_data(results, splits, export_dir, side)
        # the grid is the data's: whole slices of `side` pixels, crops no larger than that
        cfg = dataclasses.replace(cfg, size=side, crop=min(cfg.crop, side), n_train=len(splits["train"]),
                                  n_val=len(splits["val"]))
        train(cfg, run_dir, data=brain_data(splits, cfg.beta, cfg.mask_expand))
        t, cfg, ckpt = load_translator(run_dir / "best.pt")
        history = common.run_history(run_dir / "latest.pt", ckpt)
        stage, report = run_dir / "weights", tmp / "report"
        onnx_path = export_onnx(t, stage / f"{TASK}.onnx", cfg.net.n_contrasts)
        delta = parity(t, onnx_path, *parity_inputs(cfg.net.n_contrasts, h=side, w=side))
        common.require_parity(delta)

        def card_for(metrics: dict | None) -> dict:
            card = build_card(TASK, onnx_path, cfg, version=version, metrics=metrics, training_data=data,
                              history=history)
            card["input"]["series"] = (f"brain MR, one of T1, T2, T1c, FLAIR (trained on {side}x{side} slices of "
                                       f"your studies)")
            card["limitations"] = (f"Trained on {data['studies']['train']} studies of your export "
                                   f"({data['patients']['train']} patients); intensities are relative per slice. "
                                   "A synthetic T1c can only show enhancement that the input contrast predicts.")
            return card

        common.write_card(card_for(None), stage, TASK)  # provisional: the evaluation runs it through the registry
        model = load_synthesis_model(load_card(TASK, stage))
        t_eval = time.time()
        res = ev.evaluate(held_out_cases(splits["test"]), model, ev.histmatch_from(map(study_images, splits["train"])),
                          panels_dir=report / "panels")
        metrics = {"dataset": f"held-out patients: {data['patients']['test']} patient(s), {res['n_series']} studies, "
                              f"{data['slices']['test']} slices, every source -> target direction",
                   "conventions": conventions("the head mask of the input series"),
                   "table": res["table"], "directions": res["directions"], "n_series": res["n_series"],
                   "n_scored_series": res["n_scored_series"],
                   "shortfalls": shortfalls(res["table"], ("identity", "histmatch"))}
        card = card_for(metrics)
        card["export_parity_max_abs"] = delta
        card["build"] = common.build_record(command(TASK, export_dir, out_dir, config), t0, t_eval, history)
        card_path = common.write_card(card, stage, TASK)
        text = ev.format_tables(res)
        write_report(report, res, text)
        (report / "studies.json").write_text(json.dumps([asdict(r) for r in results], indent=1))
        own = _domain_folder(results, Path(export_dir), tmp / "domain")
        card = common.add_domain(card_path, common.feature_tensor(onnx_path, t, feature_module(t)),
                                 None if own else common.domain_counts(config), data=own, log=log)
        log(text)
        install(stage, out_dir, TASK)
        shutil.rmtree(Path(out_dir) / f"{TASK}.retrain", ignore_errors=True)
        shutil.move(report, Path(out_dir) / f"{TASK}.retrain")
    return card
