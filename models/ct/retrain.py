"""Retrain the CT -> pseudo-MRI model on a hospital's PACS export (`python -m models retrain
pseudo_mri EXPORT_DIR --out MODELS_DIR`): find the CT and the T2-weighted MR series of each
pseudo-MRI region (head-and-neck, abdomen/pelvis) with the service's series classifier and
header rules, split the patients, train seed 004's CycleGAN on the training patients' CT
and MR slices *unpaired* (shuffled independently, as the seed's 52 CT + 52 MR patients
were), pick the best checkpoint and score the held-out patients on MRs registered to their
CT (same frame of reference, the CT's slices), with seed 004's metrics against the
unpaired HU map fitted on the training patients, export ONNX with its card and training
domain, and install it into MODELS_DIR only when all of that succeeded.

Validation and test patients need such a registered MR (an RT planning MR exported in the
CT's frame of reference): without a registered truth nothing can score a pseudo-MRI's
pixels. Training patients need none: CT and MR may come from different patients."""

from __future__ import annotations

import dataclasses
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dicom_synth.classify import classify_series
from dicom_synth.classify.facts import extract_facts
from dicom_synth.classify.rules import load_rules
from dicom_synth.intensity import normalise_slices
from dicom_synth.multicontrast import load_synthesis_model
from dicom_synth.registry import load_card
from dicom_synth.series import group_series, load_series
from dicom_synth.taskfit import synthetic_reason
from models.common import export as common
from models.common.evaluate import body_mask, conventions, shortfalls, unit_slices, write_report
from models.common.layers import with_post_filter
from models.common.retrain import SPLIT_NOTE, NotEnoughData, command, gather, install, split_by_patient, workspace
from models.ct import evaluate as ev
from models.ct.export import TASK, build_card, export_onnx, feature_module, parity
from models.ct.recipe import DEMO_POST_FILTER
from models.ct.train import CONFIGS, Domains, load_generator, train

REGION_OF = {"ct_head_neck": "head_neck", "ct_abdomen_pelvis": "abdomen"}  # classifier label -> region
T2_RULES = {"t2_timing"}  # rules.yaml: long TR and TE
NOT_T2_RULES = {"fat_suppressed", "stir", "stir_timing", "flair_timing", "flair_words", "t1_flair_words",
                "diffusion", "diffusion_words", "contrast_agent_given", "post_contrast_words", "subtraction",
                "t1_gradient_echo", "t1_spin_echo", "proton_density", "localizer", "derived_map_or_projection",
                "epi_without_diffusion", "blank_pixels", "not_an_image_storage_class"}
MIN_CT_SERIES_FOR_OWN_DOMAIN = 30  # fewer: the domain block comes from the phantom
NEEDS = ("Training needs CT series and T2-weighted MR series (no fat suppression, no contrast) of the "
         "head-and-neck or the abdomen/pelvis; the validation and test patients each need an MR registered "
         "to their CT (the CT's FrameOfReferenceUID and slices).")


@dataclass
class Found:
    """One series of the export: its role here (CT or MR of a region) or why it has none."""

    uid: str
    patient: str
    modality: str
    description: str
    files: list[Path]
    region: str | None = None
    why: str = ""
    frame: str = ""
    volume: np.ndarray | None = field(default=None, repr=False)  # HU (CT) or stored MR units
    positions: np.ndarray | None = field(default=None, repr=False)  # (N, 3) ImagePositionPatient
    grid: tuple = ()  # (rows, columns, pixel spacing, orientation)


def mr_region(slices) -> str | None:
    """The region of an MR series by the header rules the classifier gives a CT's region
    (`ct_*_part`, `ct_*_words` in rules.yaml: BodyPartExamined, descriptions)."""
    rules = load_rules()
    facts = extract_facts(list(slices), rules.settings)
    probs, _ = rules.score({**facts, "Modality": "CT"})
    return REGION_OF.get(max(probs, key=lambda k: probs[k]))


def series_role(slices, volume: np.ndarray) -> tuple[str | None, str]:
    """(region, why) of one series: a CT of a region the classifier routes to pseudo_mri, or a
    T2-weighted MR (no fat suppression, inversion or contrast) of such a region."""
    modality = str(slices[0].get("Modality", ""))
    if reason := synthetic_reason(slices):
        return None, reason
    c = classify_series(list(slices), volume, use_pixel_model=False)
    if modality == "CT":
        region = REGION_OF.get(c.label)
        return region, f"classifier: {c.label} ({c.confidence:.2f})" + ("" if region else ", no pseudo-MRI region")
    if modality != "MR":
        return None, f"modality {modality or 'missing'}"
    fired = set(c.evidence.get("rules", []))
    if not fired & T2_RULES or fired & NOT_T2_RULES:
        return None, "not a T2-weighted MR without fat suppression (rules: " + ", ".join(
            sorted(fired & (T2_RULES | NOT_T2_RULES)) or ["no T2 timing"]) + ")"
    region = mr_region(slices)
    return region, f"T2-weighted MR ({c.label}), region {region or 'not in the headers'}"


def find_series(export_dir: Path, log: Callable[[str], None] = print) -> list[Found]:
    """Every series under export_dir with its role (CT / MR of a region) or why it has none."""
    found = []
    for sf in group_series([Path(export_dir)]):
        f = Found(sf.series_instance_uid, "", sf.modality, sf.series_description, list(sf.files))
        try:
            loaded = load_series(sf.files, pixels=True)
        except Exception as exc:  # no pixels, undecodable: say so, keep going
            f.why = f"unreadable ({exc})"
            found.append(f)
            continue
        s0 = loaded.slices[0]
        f.patient = str(s0.get("PatientID", "") or sf.study_instance_uid)
        f.region, f.why = series_role(loaded.slices, loaded.volume)
        if f.region is not None:
            f.volume = np.asarray(loaded.volume, np.float32)
            f.frame = str(s0.get("FrameOfReferenceUID", ""))
            f.positions = np.array([[float(v) for v in s.ImagePositionPatient] for s in loaded.slices])
            f.grid = (int(s0.Rows), int(s0.Columns), tuple(round(float(v), 4) for v in s0.PixelSpacing),
                      tuple(round(float(v), 4) for v in s0.ImageOrientationPatient))
        log(f"{f.uid} {f.modality} {f.description!r}: " + (f"{f.region}" if f.region else "not used") + f" ({f.why})")
        found.append(f)
    return found


def registered_pair(ct: Found, mrs: list[Found], tol_mm: float = 0.05) -> tuple[np.ndarray, np.ndarray] | None:
    """The CT's slices and an MR's on the same slices (same frame of reference and grid, slice
    positions within tol_mm), when the MR covers at least 90 % of the CT's slices."""
    for mr in mrs:
        if mr.region != ct.region or not ct.frame or mr.frame != ct.frame or mr.grid != ct.grid:
            continue
        pairs = [(i, int(np.argmin(d))) for i, p in enumerate(ct.positions)
                 if (d := np.linalg.norm(mr.positions - p, axis=1)).min() <= tol_mm]
        if len(pairs) >= 0.9 * len(ct.positions):
            i, j = (list(v) for v in zip(*pairs, strict=True))
            return ct.volume[i], mr.volume[j]
    return None


def pad_to(slices: np.ndarray, side: int, value: float) -> np.ndarray:
    """(N, H, W) padded bottom/right to (N, side, side), as the runtime pads its input."""
    n, h, w = slices.shape
    return np.pad(slices, ((0, 0), (0, side - h), (0, side - w)), constant_values=value)


@dataclass
class Splits:
    series: dict[str, list[Found]]  # split -> the CT and MR series used
    pairs: dict[str, list[tuple[Found, np.ndarray, np.ndarray]]]  # val/test: (CT, HU, MR) registered
    regions: tuple[str, ...]
    side: int


def split_export(found: list[Found], multiple: int) -> Splits:
    """The usable series split by patient; raises NotEnoughData saying what is missing."""
    used = [f for f in found if f.region]
    cts = {f.region for f in used if f.modality == "CT"}
    mrs = {f.region for f in used if f.modality == "MR"}
    if not cts:
        raise NotEnoughData("no CT series of the head-and-neck or the abdomen/pelvis (as the series classifier "
                            f"sees them) among {len(found)} series. " + NEEDS)
    regions = tuple(sorted(cts & mrs))
    if not regions:
        raise NotEnoughData(f"CT of {', '.join(sorted(cts))} found, but no T2-weighted MR series of "
                            f"{'that region' if len(cts) == 1 else 'those regions'}"
                            + (f" (MR only of {', '.join(sorted(mrs))})" if mrs else "") + ". " + NEEDS)
    for f in used:
        if f.region not in regions:
            f.why, f.region, f.volume = f"{f.why}; no {'MR' if f.modality == 'CT' else 'CT'} of {f.region}", None, None
    used = [f for f in used if f.region]
    by_patient: dict[str, list[str]] = defaultdict(list)
    for f in used:
        by_patient[f.patient].append(f.uid)
    of = {f.uid: f for f in used}
    series = {s: [of[u] for u in uids] for s, uids in split_by_patient(by_patient).items()}
    train_has = {(f.modality, f.region) for f in series["train"]}
    lacking = [f"{m} of {r}" for r in regions for m in ("CT", "MR") if (m, r) not in train_has]
    if lacking:
        raise NotEnoughData(f"the training patients have no {', '.join(lacking)}. " + NEEDS)
    pairs: dict[str, list] = {}
    for split in ("val", "test"):
        mr_of = [f for f in series[split] if f.modality == "MR"]
        pairs[split] = [(ct, *p) for ct in series[split] if ct.modality == "CT"
                        if (p := registered_pair(ct, mr_of)) is not None]
        if not pairs[split]:
            patients = sorted({f.patient for f in series[split]})
            raise NotEnoughData(f"no {split} patient ({', '.join(patients)}) has an MR registered to its CT "
                                "(the CT's FrameOfReferenceUID, grid and slices). " + NEEDS)
    longest = max(max(f.volume.shape[1:]) for f in used)
    return Splits(series, pairs, regions, -(-longest // multiple) * multiple)


def domains(splits: Splits, ct_input: Callable[[np.ndarray], np.ndarray]) -> Domains:
    """The training patients' CT and MR slices (unpaired), the validation pairs, padded to one side."""
    side = splits.side
    train = splits.series["train"]
    ct = [pad_to(ct_input(f.volume), side, -1.0) for f in train if f.modality == "CT"]
    mr = [pad_to(normalise_slices(f.volume), side, -1.0) for f in train if f.modality == "MR"]
    val = splits.pairs["val"]
    return Domains(np.concatenate(ct), np.concatenate(mr),
                   np.concatenate([pad_to(ct_input(hu), side, -1.0) for _, hu, _ in val]),
                   np.concatenate([pad_to(normalise_slices(m), side, -1.0) for _, _, m in val]),
                   np.concatenate([pad_to(hu > -500, side, False) for _, hu, _ in val]),
                   {s: sorted({f.patient for f in v}) for s, v in splits.series.items()})


def hu_map(train: list[Found]) -> ev.PiecewiseMap:
    """The baseline: the quantile map of the training patients' CT body voxels onto their MR's."""
    ct = np.concatenate([f.volume[ev.body_mask_ct(f.volume)] for f in train if f.modality == "CT"])
    mr = np.concatenate([unit_slices(f.volume)[body_mask(f.volume)] for f in train if f.modality == "MR"])
    return ev.fit_quantile_map(ct, mr)


def training_data(found: list[Found], splits: Splits, export_dir: Path) -> dict:
    def count(split: str, modality: str) -> int:
        return sum(f.modality == modality for f in splits.series[split])

    return {
        "kind": "your studies: CT and T2-weighted MR series, unpaired for training; held-out MRs registered "
                "to their CT",
        "export": str(export_dir), "series_found": len(found), "regions": list(splits.regions),
        "patients": {s: len({f.patient for f in v}) for s, v in splits.series.items()},
        "ct_series": {s: count(s, "CT") for s in splits.series},
        "mr_series": {s: count(s, "MR") for s in splits.series},
        "registered_pairs": {s: len(v) for s, v in splits.pairs.items()},
        "slices": {s: int(sum(f.volume.shape[0] for f in v)) for s, v in splits.series.items()},
        "matrix": [splits.side, splits.side],
        "series": [{"series": f.uid, "split": s, "modality": f.modality, "region": f.region,
                    "description": f.description} for s, v in splits.series.items() for f in v],
        "not_used": [{"series": f.uid, "modality": f.modality, "why": f.why} for f in found if not f.region],
        "split": SPLIT_NOTE,
    }


def retrain(export_dir: Path, out_dir: Path, config: str = "small", run_dir: Path | None = None,
            version: str = "1.0.0", log: Callable[[str], None] = print) -> dict:
    """Find, split, train, evaluate, export and install the model (`models.common.retrain`)."""
    with workspace("ct", run_dir) as (tmp, run_dir, t0):
        cfg = CONFIGS[config]
        found = find_series(export_dir, log)
        splits = split_export(found, cfg.net.spatial_multiple)
        crop = min(cfg.crop, splits.side)
        cfg = dataclasses.replace(cfg, regions=splits.regions, size=splits.side, crop=crop,
                                  n_train=len(splits.series["train"]), n_val=len(splits.pairs["val"]))
        data = training_data(found, splits, export_dir)
        train(cfg, run_dir, domains=domains(splits, cfg.ct_input))
        g, cfg, ckpt = load_generator(run_dir / "best.pt")
        history = common.run_history(run_dir / "latest.pt", ckpt)
        g = with_post_filter(g, DEMO_POST_FILTER)
        stage = run_dir / "weights"
        onnx_path = export_onnx(g, stage / f"{TASK}.onnx")
        _, hu, _ = splits.pairs["val"][0]
        delta = parity(g, onnx_path, pad_to(cfg.ct_input(hu[:2]), splits.side, -1.0)[:, None].astype(np.float32))
        common.require_parity(delta)

        def card_with(metrics: dict | None) -> dict:
            return build_card(TASK, onnx_path, cfg, version=version, metrics=metrics, training_data=data,
                              history=history, post_filter=DEMO_POST_FILTER)

        common.write_card(card_with(None), stage, TASK)  # provisional: the evaluation runs it through the registry
        model = load_synthesis_model(load_card(TASK, stage))
        t_eval = time.time()
        cases = [{"id": f"{ct.patient}-{ct.uid[-8:]}", "region": ct.region, "ct": h, "mr": m}
                 for ct, h, m in splits.pairs["test"]]
        res = ev.evaluate(cases, model, {"hu_map": hu_map(splits.series["train"])},
                          panels_dir=Path(out_dir) / f"{TASK}.retrain" / "panels")
        metrics = {"dataset": f"held-out patients: {data['patients']['test']} patient(s), {res['n_series']} CT "
                              f"series with a registered MR, {res['n_slices']} slices",
                   "conventions": conventions("the CT body mask (> -500 HU, filled)"),
                   "table": res["table"], "baselines": res["baselines"], "n_series": res["n_series"],
                   "n_slices": res["n_slices"], "shortfalls": shortfalls(res["table"], ("hu_map",))}
        card = card_with(metrics)
        card["export_parity_max_abs"] = delta
        card["build"] = common.build_record(command(TASK, export_dir, out_dir, config), t0, t_eval, history)
        card_path = common.write_card(card, stage, TASK)
        text = ev.format_tables(res)
        write_report(Path(out_dir) / f"{TASK}.retrain", res, text)
        own = sum(data["ct_series"].values()) >= MIN_CT_SERIES_FOR_OWN_DOMAIN
        domain_data = gather({f.uid: f.files for v in splits.series.values() for f in v if f.modality == "CT"},
                             tmp / "domain") if own else None
        card = common.add_domain(card_path, common.feature_tensor(onnx_path, g, feature_module(g)),
                                 None if domain_data else common.domain_counts(config), data=domain_data, log=log)
        log(text)
        install(stage, out_dir, TASK)
    return card
