"""`classify_series`: what a series is, how sure we are, why, and where it goes.

Called by the service for every job, so it is fast (headers, three small slices through
ONNX Runtime) and never raises: an odd header gives `unknown` with the reason.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom import Dataset

from dicom_synth.classify.facts import Facts, extract_facts
from dicom_synth.classify.fusion import FusionSettings, decide
from dicom_synth.classify.labels import UNKNOWN
from dicom_synth.classify.pixelfacts import pixel_facts
from dicom_synth.classify.pixelmodel import PixelModel, load_pixel_model
from dicom_synth.classify.routing import load_routing
from dicom_synth.classify.rules import load_rules
from dicom_synth.domainguard import DomainVerdict, assess
from dicom_synth.series import LoadedSeries

log = logging.getLogger(__name__)

_EVIDENCE_FACTS = (
    "Modality", "Vendor", "Manufacturer", "SOPClassUID", "BodyPartExamined", "SeriesDescription",
    "ProtocolName", "SequenceName", "ImageType", "ScanningSequence", "SequenceVariant",
    "ScanOptions", "RepetitionTime", "EchoTime", "InversionTime", "FlipAngle",
    "MagneticFieldStrength", "PatientPosition", "Orientation", "ContrastAgent",
    "DiffusionEvidence", "BValues", "BValueSources", "BValueClass", "Phase", "PhaseInfo",
    "NumberOfSlices", "PixelBlank", "TissueAreaCM2", "BoneFraction", "LungFraction",
    "LargestPartFraction", "SoftTissueHUStd",
)


@dataclass(frozen=True)
class Classification:
    """The answer for one series. `evidence` is JSON-serialisable."""

    label: str
    confidence: float
    evidence: dict = field(default_factory=dict)
    route: str | None = None


def _top(p: dict[str, float], n: int = 4) -> dict[str, float]:
    return {k: round(v, 4) for k, v in sorted(p.items(), key=lambda kv: -kv[1])[:n] if v > 0.0005}


def _jsonable(value: object) -> object:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (bool, int, str)) or value is None:
        return value
    if isinstance(value, float):
        return round(value, 4)
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return str(value)


def _pixel_probabilities(model: PixelModel | None, slices: Sequence[Dataset], volume: np.ndarray | None,
                         facts: Facts) -> tuple[dict[str, float] | None, DomainVerdict | None]:
    """The pixel network's probabilities and its domain verdict on this series."""
    if model is None or volume is None or facts.get("PixelBlank") is not False:
        return None, None
    if str(facts.get("Modality", "")).upper() not in ("MR", "CT"):
        return None, None
    probs, features = model.predict_with_features(volume, is_ct=str(facts.get("Modality")).upper() == "CT")
    if model.model_card is None:
        return probs, None
    return probs, assess(model.model_card, LoadedSeries(list(slices), [], [], volume), features)


def classify_series(
    slices: Sequence[Dataset],
    volume: np.ndarray | None = None,
    *,
    rules_path: Path | None = None,
    routing_path: Path | None = None,
    model_path: Path | None = None,
    use_pixel_model: bool = True,
) -> Classification:
    """Classify one series from its slice headers (and pixels, when given).

    `volume` is (N, H, W) in modality units (rescale applied), as `dicom_synth.series`
    loads it. Never raises: any failure gives `unknown` with the error in the evidence.
    """
    try:
        rules = load_rules(rules_path)
        facts = extract_facts(list(slices), rules.settings)
        facts.update(pixel_facts(volume, facts))
        header_p, fired = rules.score(facts)
        pixel_p, pixel_domain, pixel_model = None, None, None
        if use_pixel_model:
            try:
                pixel_model = load_pixel_model(model_path)
                pixel_p, pixel_domain = _pixel_probabilities(pixel_model, slices, volume, facts)
            except Exception as exc:  # a broken model must not stop classification
                log.warning("pixel model failed: %s", exc)
        # A pixel verdict on an image outside the network's training domain is recorded,
        # never used: it neither vetoes nor sways the headers.
        pixel_trusted = pixel_domain is None or pixel_domain.in_domain
        fusion_cfg = dict(rules.settings.get("fusion") or {})
        if "pixel_groups" in fusion_cfg:
            fusion_cfg["pixel_groups"] = tuple(tuple(str(x) for x in g) for g in fusion_cfg["pixel_groups"])
        if "pixel_modalities" in fusion_cfg:
            fusion_cfg["pixel_modalities"] = tuple(str(m).upper() for m in fusion_cfg["pixel_modalities"])
        fusion = FusionSettings(**fusion_cfg)
        modality = str(facts.get("Modality", "")).upper()
        pixel_used = pixel_p if modality in fusion.pixel_modalities and pixel_trusted else None
        decision = decide(header_p, pixel_used, fusion,
                          pixel_veto=pixel_p if pixel_used is None and pixel_trusted else None)
        reason = decision.reason
        if reason == "headers" and "TissueAreaCM2" in facts:
            reason = "headers and Hounsfield pixel facts"
        if not pixel_trusted and pixel_p is not None:
            reason += " (pixels ignored: outside the pixel network's training domain)"
        evidence = {
            "reason": reason,
            "rules": fired,
            "header_probabilities": _top(header_p),
            "pixel_probabilities": _top(pixel_p) if pixel_p is not None else None,
            "pixel_model_used": pixel_used is not None,
            # which network gave the pixel probabilities (a retrained one: its card's sha256)
            "pixel_model_sha256": pixel_model.card.get("sha256") if pixel_p is not None and pixel_model else None,
            "pixel_domain": pixel_domain.to_json() if pixel_domain is not None else None,
            "fused_probabilities": _top(decision.probabilities),
            "facts": {k: facts[k] for k in _EVIDENCE_FACTS if k in facts},
        }
        route = load_routing(routing_path).route(decision.label)
        return Classification(decision.label, round(float(decision.confidence), 4),
                              _jsonable(evidence), route)  # type: ignore[arg-type]
    except Exception as exc:
        log.exception("classification failed")
        return Classification(UNKNOWN, 0.0, {"reason": f"classification failed: {exc!r}"}, None)
