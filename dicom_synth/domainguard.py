"""Domain guard: is a series like the data a model was trained on?

A model card's `domain` block (written offline by `python -m models.domain_reference`)
records the training domain: modality, body parts, orientation, pixel-spacing, matrix and
slice-thickness ranges (each with the range accepted at run time), intensity statistics
of the normalised network input, and a reference distribution of the network's own
`features` output (encoder activations, global-average pooled, one row per slice) with a
threshold calibrated on validation series of the model's own domain.

`assess(card, series, features)` compares a series with that block and says what differs
("sagittal; trained on axial", "pixel spacing 0.4 mm; trained on 0.8-1.2 mm") and how far
its features lie from the reference (a Mahalanobis-type score, mean over the probed
slices). A card without a `domain` block is not assessed. numpy only: no torch, no ONNX.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

GUARD_MODES = ("refuse", "warn", "off")
FEATURES_OUTPUT = "features"  # the second graph output every model carries
PROBE_SLICES = 8  # slices of a series scored (evenly spaced); the classifier uses its own 3
RETRAIN_HINT = "retrain on your own studies: see models/README.md"
CLASSIFIER_TASK = "series_classification"


# ------------------------------------------------------------------ series facts
def orientation_of(iop: Sequence[float] | None) -> str:
    """'axial', 'coronal', 'sagittal', 'oblique' (no axis within ~35 degrees of the
    slice normal) or 'unknown' (no ImageOrientationPatient)."""
    try:
        v = np.asarray([float(x) for x in iop], np.float64) if iop is not None else None
    except (TypeError, ValueError):
        v = None
    if v is None or v.shape != (6,):
        return "unknown"
    normal = np.cross(v[:3], v[3:])
    norm = np.linalg.norm(normal)
    if norm < 1e-6:
        return "unknown"
    normal = np.abs(normal / norm)
    axis = int(np.argmax(normal))
    if normal[axis] < 0.82:
        return "oblique"
    return ("sagittal", "coronal", "axial")[axis]


def _float(value: Any) -> float | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if np.isfinite(f) and f > 0 else None


def series_facts(slices: Sequence[Any]) -> dict[str, Any]:
    """The header facts the domain is stated in, from the first slice's header."""
    ds = slices[0] if slices else None
    get = (lambda k: getattr(ds, k, None)) if ds is not None else (lambda k: None)
    spacing = get("PixelSpacing")
    px = None
    if spacing is not None:
        vals = [_float(x) for x in spacing][:2]
        px = float(np.mean(vals)) if vals and all(v is not None for v in vals) else None
    rows, cols = get("Rows"), get("Columns")
    return {
        "modality": str(get("Modality") or "").upper(),
        "body_part": str(get("BodyPartExamined") or "").upper(),
        "orientation": orientation_of(get("ImageOrientationPatient")),
        "pixel_spacing_mm": px,
        "matrix": int(max(int(rows), int(cols))) if rows and cols else None,
        "matrix_text": f"{int(rows)}x{int(cols)}" if rows and cols else None,
        "slice_thickness_mm": _float(get("SliceThickness")),
    }


# ------------------------------------------------------------------ what the network sees
def sample_indices(depth: int, k: int = PROBE_SLICES) -> np.ndarray:
    """k slice indices evenly spread over the stack (all when there are no more)."""
    if depth <= k:
        return np.arange(depth)
    return np.unique(np.linspace(0, depth - 1, k).round().astype(int))


def normalised_probe(card: Any, volume: np.ndarray, modality: str = "") -> np.ndarray:
    """The normalised network input of the probed slices, (k, H, W), as the card says
    (the classifier's own preprocessing for its card; CT or not sets its second channel)."""
    vol = np.nan_to_num(np.asarray(volume, np.float32))
    if vol.ndim == 2:
        vol = vol[None]
    if card.task == CLASSIFIER_TASK:
        from dicom_synth.classify.pixelmodel import preprocess

        return preprocess(vol, is_ct=modality.upper() == "CT")[:, 0]
    from dicom_synth.multicontrast import normalise

    return normalise(vol[sample_indices(vol.shape[0])], card.normalisation)


def intensity_stats(norm: np.ndarray) -> dict[str, float]:
    """Mean and standard deviation of the normalised input over the probed slices."""
    a = np.asarray(norm, np.float64)
    return {"mean": float(a.mean()), "std": float(a.std())}


# ------------------------------------------------------------------ feature reference
def fit_reference(features: Sequence[np.ndarray], *, components: int = 16,
                  shrinkage: float = 0.05) -> dict[str, Any]:
    """A Gaussian reference of per-slice feature rows: mean, the top principal directions
    with their variances, and one variance for the rest (probabilistic PCA). The variances
    are shrunk towards their mean so a direction the training data never moved along does
    not make every new series infinitely far."""
    x = np.concatenate([np.asarray(f, np.float64).reshape(len(f), -1) for f in features])
    mean = x.mean(axis=0)
    xc = x - mean
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    var = s ** 2 / max(len(x) - 1, 1)
    dim = x.shape[1]
    k = int(min(components, dim, max(len(x) - 1, 1)))
    total = float(var.sum()) / dim
    floor = max(total, 1e-12)
    top = (1 - shrinkage) * var[:k] + shrinkage * floor
    rest = var[k:]
    residual = float(rest.sum() / max(dim - k, 1)) if dim > k else 0.0
    residual = (1 - shrinkage) * residual + shrinkage * floor
    return {
        "dim": int(dim), "slices": int(len(x)), "shrinkage": shrinkage,
        "mean": [float(v) for v in mean],
        "components": [[float(v) for v in row] for row in vt[:k]],
        "variances": [float(v) for v in top],
        "residual_variance": residual,
    }


def slice_scores(reference: Mapping[str, Any], features: np.ndarray) -> np.ndarray:
    """Squared Mahalanobis distance of each feature row to the reference, divided by the
    feature dimension (about 1 for a row drawn from the reference itself)."""
    x = np.asarray(features, np.float64).reshape(len(features), -1)
    mean = np.asarray(reference["mean"], np.float64)
    if x.shape[1] != mean.shape[0]:
        raise ValueError(f"features have {x.shape[1]} values per slice, the reference {mean.shape[0]}")
    comp = np.asarray(reference["components"], np.float64)
    var = np.asarray(reference["variances"], np.float64)
    xc = x - mean
    proj = xc @ comp.T
    resid = (xc ** 2).sum(axis=1) - (proj ** 2).sum(axis=1)
    d2 = (proj ** 2 / var).sum(axis=1) + np.maximum(resid, 0) / float(reference["residual_variance"])
    return d2 / mean.shape[0]


def series_score(reference: Mapping[str, Any], features: np.ndarray) -> float:
    """The series' feature score: the mean of its slices' scores."""
    return float(slice_scores(reference, features).mean())


# ------------------------------------------------------------------ the verdict
@dataclass(frozen=True)
class DomainVerdict:
    """Whether a series is inside a model's training domain, and why not."""

    model: str
    in_domain: bool
    score: float | None
    threshold: float | None
    differences: list[str] = field(default_factory=list)
    assessed: bool = True  # False: the card records no domain

    def summary(self) -> str:
        """'brain_contrasts: sagittal; trained on axial; feature score 31.73, threshold 3.41'."""
        if not self.assessed:
            return f"{self.model}: no training domain recorded in the model card"
        score = "n/a" if self.score is None else f"{self.score:.2f}"
        thr = "n/a" if self.threshold is None else f"{self.threshold:.2f}"
        what = "; ".join(self.differences) if self.differences else "no header difference"
        return f"{self.model}: {what}; feature score {score}, threshold {thr}"

    def refusal(self) -> str:
        """The reason a refused job gives."""
        return f"series outside the model's training domain ({self.summary()}); {RETRAIN_HINT}"

    def warning(self) -> str:
        """The note a synthesized-anyway output carries (ImageComments) and its job."""
        return f"WARNING: input outside the model's training domain ({self.summary()})"

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model, "in_domain": self.in_domain, "assessed": self.assessed,
            "score": None if self.score is None else round(self.score, 4),
            "threshold": None if self.threshold is None else round(self.threshold, 4),
            "differences": list(self.differences),
        }


def _range_text(lo: float, hi: float, unit: str, fmt: str) -> str:
    a, b = format(lo, fmt), format(hi, fmt)
    return f"{a}{unit}" if a == b else f"{a}-{b}{unit}"


def _check_range(diffs: list[str], label: str, value: float | None, spec: Mapping[str, Any] | None,
                 unit: str, fmt: str = ".2g", shown: str | None = None) -> None:
    if not spec or "accept" not in spec:  # absent, or recorded only
        return
    lo, hi = spec["trained"]
    acc_lo, acc_hi = spec["accept"]
    if value is None:
        if spec.get("required", False):
            diffs.append(f"no {label}; trained on {_range_text(lo, hi, unit, fmt)}")
        return
    if not acc_lo <= value <= acc_hi:
        diffs.append(f"{label} {shown or format(value, fmt) + unit}; trained on {_range_text(lo, hi, unit, fmt)}")


def header_differences(domain: Mapping[str, Any], facts: Mapping[str, Any]) -> list[str]:
    """What in the headers lies outside the recorded domain, in words."""
    diffs: list[str] = []
    modalities = [str(m).upper() for m in domain.get("modality") or []]
    if modalities and facts["modality"] not in modalities:
        diffs.append(f"modality {facts['modality'] or 'missing'}; trained on {'/'.join(modalities)}")
    parts = [str(p).upper() for p in domain.get("body_parts") or []]
    if parts and facts["body_part"] and facts["body_part"] not in parts:
        diffs.append(f"body part {facts['body_part']}; trained on {'/'.join(parts)}")
    orientations = list(domain.get("orientation") or [])
    if orientations and facts["orientation"] not in orientations:
        diffs.append(f"{facts['orientation']}; trained on {'/'.join(orientations)}")
    _check_range(diffs, "pixel spacing", facts["pixel_spacing_mm"], domain.get("pixel_spacing_mm"), " mm")
    _check_range(diffs, "matrix", facts["matrix"], domain.get("matrix"), " px", ".0f", facts.get("matrix_text"))
    _check_range(diffs, "slice thickness", facts["slice_thickness_mm"], domain.get("slice_thickness_mm"), " mm")
    return diffs


def intensity_differences(domain: Mapping[str, Any], stats: Mapping[str, float]) -> list[str]:
    diffs: list[str] = []
    for key, spec in (domain.get("intensity") or {}).items():
        if key in stats:
            _check_range(diffs, f"normalised input {key}", stats[key], spec, "", ".2f")
    return diffs


def assess(card: Any, series: Any, features: np.ndarray | None = None) -> DomainVerdict:
    """Score a loaded series (`.slices` headers, `.volume` (N, H, W) in modality units)
    against the card's domain. `features`: the model's `features` output on the probed
    slices (None: the feature score is not computed and only headers and intensities
    decide)."""
    domain = card.extra.get("domain") if hasattr(card, "extra") else None
    if not domain:
        return DomainVerdict(card.name, True, None, None, [], assessed=False)
    facts = series_facts(series.slices)
    diffs = header_differences(domain, facts)
    if series.volume is not None and not diffs:  # intensities of another modality mean nothing
        norm = normalised_probe(card, series.volume, facts["modality"])
        diffs += intensity_differences(domain, intensity_stats(norm))
    ref = domain.get("features") or {}
    threshold = float(ref["threshold"]) if "threshold" in ref else None
    score = None
    if features is not None and ref and len(features):
        score = series_score(ref, features)
        if not np.isfinite(score):
            score = float("inf")
    in_domain = not diffs and (score is None or threshold is None or score <= threshold)
    if score is not None and threshold is not None and score > threshold:
        diffs.append(f"image features unlike the training data (score {score:.2f} > {threshold:.2f})")
    return DomainVerdict(card.name, in_domain, score, threshold, diffs)


# ------------------------------------------------------------------ the worker's decision
@dataclass(frozen=True)
class GuardOutcome:
    """What the guard decided for one synthesis: go on or not, and what to say."""

    verdict: DomainVerdict | None  # None: the guard is off
    proceed: bool
    notes: tuple[str, ...] = ()  # for the outputs' ImageComments (warn mode)
    reason: str | None = None  # why the job is skipped (refuse mode)

    def evidence(self, mode: str) -> dict[str, Any]:
        out: dict[str, Any] = {"mode": mode}
        if self.verdict is not None:
            out.update(self.verdict.to_json())
        if self.notes:
            out["warning"] = self.notes[0]
        return out


def check_mode(mode: str) -> str:
    mode = str(mode).strip().lower()
    if mode not in GUARD_MODES:
        raise ValueError(f"domain guard mode must be one of {', '.join(GUARD_MODES)}, got {mode!r}")
    return mode


def guard(card: Any, model: Any, series: Any, mode: str, source_label: str | None = None) -> GuardOutcome:
    """Score the series against the model's domain and decide: `refuse` stops an
    out-of-domain series, `warn` lets it through with a note, `off` does not look."""
    mode = check_mode(mode)
    if mode == "off":
        return GuardOutcome(None, True)
    features = None
    probe = getattr(model, "features", None)
    if probe is not None and series.volume is not None:
        features = probe(series.volume, source_label=source_label)
    verdict = assess(card, series, features)
    if verdict.in_domain:
        return GuardOutcome(verdict, True)
    if mode == "refuse":
        return GuardOutcome(verdict, False, reason=verdict.refusal())
    return GuardOutcome(verdict, True, notes=(verdict.warning(),))
