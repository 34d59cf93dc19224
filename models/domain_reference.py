"""Build a model card's `domain` block (what `dicom_synth.domainguard` checks at run time).

    python -m models.domain_reference --task brain_contrasts      # one model
    python -m models.domain_reference --all                       # every family's card
    python -m models.domain_reference --task series_classification --models-dir my-models/

For the model of the task it
1. gives the ONNX graph a second output `features` (N, F) when it has none: the global
   average pool of a deep encoder tensor (`FEATURE_TENSORS`, or `--tensor`), appended by
   graph surgery; the main output is checked bit-identical on phantom and random input,
   and the card's sha256 is updated. A graph that already has `features` (a classifier
   exported by `models.classifier.train`) is left as it is;
2. renders its family's phantom series with the family's own split code — the *train*
   split fits the header ranges, the normalised-input intensity ranges and the feature
   reference (mean and top principal directions of the per-slice features), the
   *validation* split calibrates the threshold (`MARGIN` x the 99th percentile of the
   validation series' scores), and the *test* split is scored as a held-out check;
3. writes the block, with how many validation series passed, into the card.

Offline only (onnx); the rendering uses each family's phantom, so it needs no torch.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dicom_synth.domainguard import (
    CLASSIFIER_TASK,
    FEATURES_OUTPUT,
    assess,
    fit_reference,
    intensity_stats,
    normalised_probe,
    series_facts,
)
from dicom_synth.registry import ModelCard, default_models_dir, load_card, sha256_file
from dicom_synth.series import LoadedSeries, load_series

# The encoder tensor pooled into `features`, per task (the tensor names torch.onnx gives
# the committed architectures). Classifier: its own pooled layer-4 activations.
FEATURE_TENSORS = {
    CLASSIFIER_TASK: "/Flatten_output_0",
    "dce_phase1": "/model/model/model.1/model/model.3/model/model.3/model/model.3/model/model.3/model/model.3"
                  "/model/model.2/Relu_output_0",  # the U-Net's innermost (bottleneck) activation
    "pseudo_mri": "/network/body/body.7/Add_output_0",  # after the residual blocks
    "brain_contrasts": "/network/blocks/blocks.0/Add_output_0",  # the contrast-independent code
}
# Accepted header range = trained range widened by these factors (lo / f, hi * f). Every
# network here is 2-D and runs at the series' own resolution: the pixel spacing sets the
# scale of the anatomy it sees.
TOLERANCE = {"pixel_spacing_mm": 1.5, "matrix": 2.0}
INTENSITY_WIDEN = 0.5  # accepted intensity range: trained range +- this share of its width
INTENSITY_MARGIN = 0.1  # ... and +- this much (normalised input units)
# threshold = MARGIN x the 99th percentile of the validation series' scores: the in-domain
# tail is long (a few subjects per split), out-of-domain series score 5-1000x the median
MARGIN = 2.5
QUANTILE = 0.99
BODY_PART_SYNONYMS = {
    "HEAD": ["HEAD", "BRAIN"], "BREAST": ["BREAST"], "HEADNECK": ["HEADNECK", "HEAD", "NECK", "BRAIN"],
    "ABDOMEN": ["ABDOMEN", "PELVIS", "ABDOMENPELVIS", "ABDOMEN_PELVIS"],
}


# ------------------------------------------------------------------ graph surgery
def has_features(onnx_path: Path) -> bool:
    import onnx

    return any(o.name == FEATURES_OUTPUT for o in onnx.load(str(onnx_path), load_external_data=False).graph.output)


def add_features_output(onnx_path: Path, tensor: str) -> bytes:
    """The model with a `features` output pooled from `tensor` (serialised; not saved)."""
    import onnx
    from onnx import TensorProto, helper, shape_inference

    model = onnx.load(str(onnx_path))
    graph = model.graph
    produced = {o for node in graph.node for o in node.output}
    if tensor not in produced:
        raise ValueError(f"{onnx_path.name} has no tensor {tensor!r}; pass --tensor")
    inferred = shape_inference.infer_shapes(model)
    rank = next((len(v.type.tensor_type.shape.dim) for v in inferred.graph.value_info if v.name == tensor), None)
    if rank == 2:
        nodes = [helper.make_node("Identity", [tensor], [FEATURES_OUTPUT], name="/domain/features")]
    else:
        pooled = "/domain/GlobalAveragePool_output_0"
        nodes = [helper.make_node("GlobalAveragePool", [tensor], [pooled], name="/domain/GlobalAveragePool"),
                 helper.make_node("Flatten", [pooled], [FEATURES_OUTPUT], name="/domain/Flatten", axis=1)]
    graph.node.extend(nodes)
    graph.output.append(helper.make_tensor_value_info(FEATURES_OUTPUT, TensorProto.FLOAT, ["batch", "features"]))
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _parity_feeds(session, card: ModelCard, sample: np.ndarray | None) -> list[dict[str, np.ndarray]]:
    """Random input and, when given, normalised phantom slices, with one-hot side inputs."""
    inputs = session.get_inputs()
    main = inputs[0]
    channels = int(card.input.get("channels", 1))
    side = int(card.input.get("height", 128))
    rng = np.random.default_rng(0)
    images = [rng.uniform(-1, 1, (2, channels, side, side)).astype(np.float32)]
    if sample is not None:
        images.append(np.ascontiguousarray(sample.astype(np.float32)))
    feeds = []
    for x in images:
        feed = {main.name: x}
        for extra in inputs[1:]:
            width = int(extra.shape[1])
            feed[extra.name] = np.eye(width, dtype=np.float32)[np.arange(len(x)) % width]
        feeds.append(feed)
    return feeds


def parity(old: bytes, new: bytes, card: ModelCard, sample: np.ndarray | None = None) -> float:
    """Max |difference| of the main output between two graphs (0.0: bit-identical)."""
    import onnxruntime as ort

    a = ort.InferenceSession(old, providers=["CPUExecutionProvider"])
    b = ort.InferenceSession(new, providers=["CPUExecutionProvider"])
    name = a.get_outputs()[0].name
    worst = 0.0
    for feed in _parity_feeds(a, card, sample):
        (pa,), (pb,) = a.run([name], feed), b.run([name], feed)
        if not np.array_equal(pa, pb):
            worst = max(worst, float(np.abs(pa - pb).max()))
    return worst


# ------------------------------------------------------------------ phantom series per family
@dataclass
class Probe:
    """One series of a family's phantom and the class the model is told it is."""

    series: LoadedSeries
    source_label: str | None
    family: str


def _loaded(files: list[Path]) -> LoadedSeries:
    return load_series(files, pixels=True)


def classifier_series(split: str, n: int) -> Iterator[Probe]:
    """n series per class of the classifier phantom (3 slices each, as the network sees)."""
    from dicom_synth.classify.labels import LABELS
    from models.classifier.phantom import make_series, split_seeds

    for seed in split_seeds(split, n):
        for label in LABELS:
            s = make_series(label, seed, n_slices=3, split=split)
            yield Probe(LoadedSeries(list(s.headers), [], [None] * len(s.headers), s.volume), label, "classifier")


def dce_series(split: str, n: int, tmp: Path) -> Iterator[Probe]:
    """The non-contrast T1 of n breast phantom subjects, at the training geometry."""
    from models.dce.phantom import generate_subject, split_seeds
    from models.dce.phantom_dicom import write_phantom_series

    for seed in split_seeds(split, n):
        subject = generate_subject(seed, n_slices=16, size=384, slice_spacing_mm=3.0)
        files = write_phantom_series(tmp / f"dce-{seed}", seed, which="t1", subject=subject)
        yield Probe(_loaded(files), "breast_t1_nc", "dce")


def brain_series(split: str, n: int, tmp: Path) -> Iterator[Probe]:
    """Every contrast of n brain phantom subjects (12 slices of 128 x 128, as trained)."""
    from models.brain.phantom import CONTRASTS, generate_subject, split_seeds
    from models.brain.phantom_dicom import write_brain_series

    for seed in split_seeds(split, n):
        subject = generate_subject(seed, n_slices=12, size=128)
        for contrast in CONTRASTS:
            files = write_brain_series(tmp / f"brain-{seed}-{contrast}", seed, contrast=contrast, subject=subject)
            yield Probe(_loaded(files), f"brain_{contrast}", "brain")


def ct_series(split: str, n: int, tmp: Path) -> Iterator[Probe]:
    """The CT of n phantom subjects per region (24 slices of 128 x 128, as trained)."""
    from models.ct.phantom import REGIONS, generate_subject, split_seeds
    from models.ct.phantom_dicom import write_ct_series

    for seed in split_seeds(split, n):
        for region in REGIONS:
            subject = generate_subject(seed, region, n_slices=24, size=128)
            files = write_ct_series(tmp / f"ct-{seed}-{region}", seed, region=region, subject=subject)
            yield Probe(_loaded(files), "ct_" + ("abdomen_pelvis" if region == "abdomen" else region), "ct")


# task: (series source, (fit, val, test) counts: subjects, or series per class for the classifier)
FAMILIES: dict[str, tuple[Callable[..., Iterator[Probe]], tuple[int, int, int]]] = {
    CLASSIFIER_TASK: (classifier_series, (5, 6, 3)),
    "dce_phase1": (dce_series, (12, 50, 6)),
    "brain_contrasts": (brain_series, (16, 25, 6)),
    "pseudo_mri": (ct_series, (20, 50, 8)),
}


def family_series(task: str, split: str, n: int, tmp: Path) -> Iterator[Probe]:
    source, _ = FAMILIES[task]
    return source(split, n) if task == CLASSIFIER_TASK else source(split, n, tmp / split)


OWN_SPLITS = {"train": range(0, 6), "val": range(6, 9), "test": range(9, 10)}  # tenths, by series UID


def own_series(root: Path, split: str) -> Iterator[Probe]:
    """Your own series under `root` (any nesting; a first folder named after a class, as
    for `models.classifier.train --real`, gives the brain model its source contrast):
    6/10 fit the reference, 3/10 calibrate, 1/10 are held out, by SeriesInstanceUID hash."""
    import hashlib

    from dicom_synth.classify.labels import LABELS
    from dicom_synth.series import group_series

    for group in group_series([root]):
        tenth = int(hashlib.sha1(group.series_instance_uid.encode()).hexdigest()[:8], 16) % 10
        if tenth not in OWN_SPLITS[split]:
            continue
        try:
            loaded = load_series(group.files, pixels=True)
        except Exception:
            continue
        top = Path(group.files[0]).resolve().relative_to(Path(root).resolve()).parts[0]
        if loaded.volume is not None:
            yield Probe(loaded, top if top in LABELS else None, "own")


# ------------------------------------------------------------------ features of one series
def feature_fn(card: ModelCard) -> Callable[[Probe], np.ndarray | None]:
    """The model's `features` on a series, exactly as the runtime asks for them."""
    if card.task == CLASSIFIER_TASK:
        from dicom_synth.classify.pixelmodel import PixelModel

        pixel = PixelModel(card.onnx_path)

        def classify_features(p: Probe) -> np.ndarray | None:
            is_ct = str(p.series.slices[0].Modality).upper() == "CT"
            return pixel.predict_with_features(p.series.volume, is_ct)[1]

        return classify_features
    from dicom_synth.multicontrast import load_synthesis_model

    model = load_synthesis_model(card, providers=["CPUExecutionProvider"], threads=2)
    return lambda p: model.features(p.series.volume, source_label=p.source_label)


# ------------------------------------------------------------------ the domain block
def _range(values: list[float], factor: float | None) -> dict | None:
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    lo, hi = float(min(vals)), float(max(vals))
    out = {"trained": [round(lo, 4), round(hi, 4)]}
    if factor:
        out["accept"] = [round(lo / factor, 4), round(hi * factor, 4)]
        out["tolerance_factor"] = factor
    return out


THICKNESS_NOTE = "recorded, not checked: the networks see single slices; a phantom's thickness is its slice spacing"


def _recorded(spec: dict | None) -> dict | None:
    return None if spec is None else {**spec, "checked": False, "note": THICKNESS_NOTE}


def _intensity_range(values: list[float]) -> dict:
    lo, hi = float(min(values)), float(max(values))
    pad = INTENSITY_WIDEN * (hi - lo) + INTENSITY_MARGIN
    return {"trained": [round(lo, 4), round(hi, 4)], "accept": [round(lo - pad, 4), round(hi + pad, 4)]}


def _round(ref: dict) -> dict:
    def r(v):
        if isinstance(v, list):
            return [r(x) for x in v]
        return float(f"{v:.6g}") if isinstance(v, float) else v

    return {k: r(v) for k, v in ref.items()}


def header_domain(card: ModelCard, facts: list[dict]) -> dict:
    classifier = card.task == CLASSIFIER_TASK
    parts: list[str] = []
    if not classifier:  # the classifier names anatomy, so any body part is its business
        for p in sorted({f["body_part"] for f in facts if f["body_part"]}):
            parts += [x for x in BODY_PART_SYNONYMS.get(p, [p]) if x not in parts]
    return {
        "modality": sorted({f["modality"] for f in facts}),
        "body_parts": parts,
        "orientation": sorted({f["orientation"] for f in facts}),
        "pixel_spacing_mm": _range([f["pixel_spacing_mm"] for f in facts], TOLERANCE["pixel_spacing_mm"]),
        # the classifier resizes each of its three slices to its own matrix: neither the
        # matrix nor the slice thickness is part of its domain
        "matrix": None if classifier else _range([f["matrix"] for f in facts], TOLERANCE["matrix"]),
        # recorded, not checked: every network here sees single slices, and a phantom's
        # "thickness" is its slice spacing, not a slab its pixels integrate over
        "slice_thickness_mm": None if classifier else _recorded(_range([f["slice_thickness_mm"] for f in facts],
                                                                       None)),
    }


def _card_with(card: ModelCard, domain: dict, sha: str | None = None) -> ModelCard:
    data = card.to_dict()
    data["domain"] = domain
    if sha:
        data["sha256"] = sha
    return ModelCard.from_dict(data, card_path=card.card_path)


def _pass(rows: list[dict], threshold: float, split: str) -> dict:
    """How many series pass: no header or intensity difference and a score within the threshold."""
    ok = [not r["differences"] and r["score"] is not None and r["score"] <= threshold for r in rows]
    failed = [f"{r['label']}: " + ("; ".join(r["differences"]) or f"score {r['score']:.2f}")
              for r, good in zip(rows, ok, strict=True) if not good][:5]
    scores = np.array([r["score"] for r in rows if r["score"] is not None])
    out = {"split": split, "series": len(rows), "passed": int(sum(ok)),
           "pass_rate": round(sum(ok) / max(len(rows), 1), 4)}
    if len(scores):
        out["score_median"] = round(float(np.median(scores)), 4)
        out["score_max"] = round(float(scores.max()), 4)
    if failed:
        out["failed_examples"] = failed
    return out


def build_domain(card: ModelCard, counts: tuple[int, int, int] | None = None,
                 log: Callable[[str], None] = print, data: Path | None = None) -> dict:
    """The `domain` block for the card's model (its ONNX must have `features`), from the
    family's phantom, or from your own series under `data`. Streams the series: nothing
    but headers, statistics and feature rows is kept."""
    fit_n, val_n, test_n = counts or FAMILIES[card.task][1]
    features_of = feature_fn(card)
    with tempfile.TemporaryDirectory(prefix="domain-") as tmp_name:
        tmp = Path(tmp_name)

        def series_of(split: str, n: int) -> Iterator[Probe]:
            return own_series(data, split) if data is not None else family_series(card.task, split, n, tmp)
        t0 = time.monotonic()
        facts, stats, fit_feats = [], [], []
        for p in series_of("train", fit_n):
            f = series_facts(p.series.slices)
            facts.append(f)
            stats.append(intensity_stats(normalised_probe(card, p.series.volume, f["modality"])))
            fit_feats.append(features_of(p))
        log(f"{card.task}: {len(facts)} train series in {time.monotonic() - t0:.0f} s")
        domain = header_domain(card, facts)
        domain["intensity"] = {k: _intensity_range([s[k] for s in stats]) for k in stats[0]}
        reference = _round(fit_reference([f for f in fit_feats if f is not None]))
        domain["features"] = {"output": FEATURES_OUTPUT, **reference, "fit": {"split": "train", "series": len(facts)}}
        probe_card = _card_with(card, domain)  # no threshold yet: the differences, and the score

        def score(split: str, n: int) -> list[dict]:
            t0 = time.monotonic()
            rows = []
            for p in series_of(split, n):
                v = assess(probe_card, p.series, features_of(p))
                rows.append({"label": p.source_label, "score": v.score, "differences": v.differences})
            log(f"{card.task}: {len(rows)} {split} series in {time.monotonic() - t0:.0f} s")
            return rows

        val = score("val", val_n)
        val_scores = np.array([r["score"] for r in val if r["score"] is not None])
        threshold = MARGIN * float(np.quantile(val_scores, QUANTILE, method="higher"))
        domain["features"]["threshold"] = round(threshold, 4)
        domain["features"]["threshold_rule"] = (f"{MARGIN} x the {QUANTILE:.0%} quantile of the feature scores "
                                                f"of {len(val_scores)} validation series")
        domain["calibration"] = _pass(val, threshold, "val")
        domain["held_out"] = _pass(score("test", test_n), threshold, "test")
    domain["built_by"] = "python -m models.domain_reference --task " + card.task + (f" --data {data}" if data else "")
    domain["source"] = f"your series under {data}" if data else f"the {card.task} family's phantom splits"
    return domain


def write_card(card: ModelCard, domain: dict, sha: str) -> None:
    data = json.loads(card.card_path.read_text())
    data["sha256"] = sha
    data["domain"] = domain
    card.card_path.write_text(json.dumps(data, indent=2) + "\n")


def _sample_input(card: ModelCard, tmp: Path) -> np.ndarray | None:
    """Two normalised phantom slices as the graph takes them (for the parity check)."""
    probe = next(family_series(card.task, "val", 1, tmp))
    if card.task == CLASSIFIER_TASK:
        from dicom_synth.classify.pixelmodel import preprocess

        return preprocess(probe.series.volume, str(probe.series.slices[0].Modality).upper() == "CT")[:2]
    from dicom_synth.multicontrast import normalise

    norm = normalise(probe.series.volume[:2], card.normalisation)[:, None]
    multiple = int(card.input.get("spatial_multiple", 1))
    from dicom_synth.inference import pad_to_multiple

    return pad_to_multiple(norm, multiple, float(card.normalisation.get("range", (-1.0, 1.0))[0]))[0]


def ensure_features(card: ModelCard, tensor: str | None = None, log: Callable[[str], None] = print) -> ModelCard:
    """Give the card's ONNX a `features` output (unless it has one); returns the card with
    the new sha256. Refuses to write a graph whose main output is not bit-identical."""
    path = card.onnx_path
    if has_features(path):
        log(f"{card.task}: {path.name} already has a '{FEATURES_OUTPUT}' output")
        return card
    tensor = tensor or FEATURE_TENSORS.get(card.task)
    if tensor is None:
        raise ValueError(f"no feature tensor known for task {card.task!r}; pass --tensor")
    old = path.read_bytes()
    new = add_features_output(path, tensor)
    with tempfile.TemporaryDirectory(prefix="domain-parity-") as tmp:
        diff = parity(old, new, card, _sample_input(card, Path(tmp)))
    if diff != 0.0:
        raise RuntimeError(f"{path.name}: the main output changed by up to {diff:g} after adding "
                           f"'{FEATURES_OUTPUT}'; not written")
    path.write_bytes(new)
    sha = sha256_file(path)
    data = json.loads(card.card_path.read_text())  # the card follows the file at once
    data["sha256"] = sha
    card.card_path.write_text(json.dumps(data, indent=2) + "\n")
    log(f"{card.task}: added '{FEATURES_OUTPUT}' (pool of {tensor}); main output bit-identical; sha256 {sha}")
    return load_card(card.task, card.card_path.parent)


def run(task: str, models_dir: Path | None = None, tensor: str | None = None,
        counts: tuple[int, int, int] | None = None, data: Path | None = None) -> dict:
    card = load_card(task, models_dir)
    card = ensure_features(card, tensor)
    domain = build_domain(card, counts, data=data)
    write_card(card, domain, card.sha256)
    cal = domain["calibration"]
    print(f"{task}: threshold {domain['features']['threshold']:.3f}; validation {cal['passed']}/{cal['series']} "
          f"pass ({cal['pass_rate']:.1%}); held-out test {domain['held_out']['passed']}/"
          f"{domain['held_out']['series']}; card {card.card_path}")
    return domain


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.domain_reference", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--task", choices=sorted(FAMILIES), help="the model to build the domain of")
    which.add_argument("--all", action="store_true", help="every family's model")
    parser.add_argument("--models-dir", type=Path, default=None,
                        help=f"folder of ONNX files and cards (default {default_models_dir()})")
    parser.add_argument("--tensor", default=None, help="encoder tensor to pool into 'features' (one task only)")
    parser.add_argument("--counts", type=int, nargs=3, metavar=("FIT", "VAL", "TEST"), default=None,
                        help="phantom subjects per split (the classifier: series per class)")
    parser.add_argument("--data", type=Path, default=None,
                        help="build from your own series under this folder instead of the phantom (one task)")
    args = parser.parse_args(argv)
    if args.all and (args.data or args.tensor):
        parser.error("--data and --tensor need --task")
    tasks = sorted(FAMILIES) if args.all else [args.task]
    for task in tasks:
        run(task, args.models_dir, args.tensor, tuple(args.counts) if args.counts else None, args.data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
