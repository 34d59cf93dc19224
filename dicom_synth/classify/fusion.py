"""Fusion of header and pixel probabilities into one answer, with an honest `unknown`.

Product of experts (each side calibrated by its own temperature), then the decision:
disagreement between two confident experts, or a top probability under the threshold,
gives `unknown` with the reason. DCE phases are decided in two steps (pre vs post, then
early vs late), the design that lifted a published contrast-phase classifier from
91.7 % to 98.3 %.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from dicom_synth.classify.labels import DCE_POST, LABELS, UNKNOWN

DCE = ("breast_dce_pre",) + DCE_POST


@dataclass(frozen=True)
class FusionSettings:
    min_confidence: float = 0.6
    disagree_confidence: float = 0.7  # both experts at least this sure of different labels
    pixel_weight: float = 1.0
    pixel_support: float = 0.2  # the pixels must give the chosen class at least this
    header_support: float = 0.05  # and the headers at least this
    pixel_modalities: tuple[str, ...] = ("MR",)  # where the pixel model has a say
    pixel_unknown_veto: float = 0.9  # elsewhere it may still say "nothing I know" (safe side)
    # classes the pixels tell apart less reliably than they tell them from the rest: inside
    # a group the pixels' log-odds count `pixel_group_weight` times (0: the headers alone
    # decide between them; 1: no different from other classes)
    pixel_groups: tuple[tuple[str, ...], ...] = ()
    pixel_group_weight: float = 0.0


def _group_of(label: str | None, groups: tuple[tuple[str, ...], ...]) -> tuple[str, ...]:
    for group in groups:
        if label in group:
            return group
    return (label,) if label else ()


def merge_groups(pixel: dict[str, float], groups: tuple[tuple[str, ...], ...],
                 weight: float = 0.0) -> dict[str, float]:
    """Pixel probabilities with each group's mass shared among its members in proportion
    to p**weight: weight 0 spreads it evenly, 1 leaves the probabilities as they are."""
    out = dict(pixel)
    for group in groups:
        mass = sum(pixel.get(k, 0.0) for k in group)
        shares = {k: max(pixel.get(k, 0.0), 1e-6) ** weight for k in group}
        total = sum(shares.values())
        for k in group:
            out[k] = mass * shares[k] / total
    return out


@dataclass(frozen=True)
class Decision:
    label: str
    confidence: float
    probabilities: dict[str, float]
    reason: str


def _top(p: dict[str, float]) -> tuple[str, float]:
    label = max(p, key=lambda k: p[k])
    return label, p[label]


def combine(header: dict[str, float], pixel: dict[str, float] | None, weight: float) -> dict[str, float]:
    """Normalised product of header and pixel probabilities (labels the headers vetoed stay 0)."""
    if pixel is None:
        return dict(header)
    logs = {}
    for label in LABELS:
        h = header.get(label, 0.0)
        if h <= 0.0:
            continue
        logs[label] = math.log(h) + weight * math.log(max(pixel.get(label, 0.0), 1e-9))
    top = max(logs.values())
    exp = {k: math.exp(v - top) for k, v in logs.items()}
    total = sum(exp.values())
    return {label: exp.get(label, 0.0) / total for label in LABELS}


def two_step_phase(p: dict[str, float]) -> tuple[str, float] | None:
    """Pre vs post first, then early vs late; None when the series is not DCE-like."""
    p_dce = sum(p[k] for k in DCE)
    if p_dce <= 0 or _top(p)[0] not in DCE:
        return None
    p_post = sum(p[k] for k in DCE_POST)
    if p[DCE[0]] >= p_post:
        return DCE[0], p[DCE[0]]
    label = max(DCE_POST, key=lambda k: p[k])
    return label, p[label]


def decide(header: dict[str, float], pixel: dict[str, float] | None,
           settings: FusionSettings = FusionSettings(), *, pixel_veto: dict[str, float] | None = None) -> Decision:
    """The label, its confidence, the fused probabilities and why. `pixel_veto`: pixel
    probabilities of a modality where the network may only say "unknown"."""
    if pixel_veto is not None and pixel_veto.get(UNKNOWN, 0.0) >= settings.pixel_unknown_veto:
        return Decision(UNKNOWN, pixel_veto[UNKNOWN], dict(header),
                        f"pixels show no anatomy of a known class ({pixel_veto[UNKNOWN]:.2f})")
    raw_pixel = pixel  # as the network said it; `pixel` below has the groups applied
    if pixel is not None and settings.pixel_groups:
        pixel = merge_groups(pixel, settings.pixel_groups, settings.pixel_group_weight)
    fused = combine(header, pixel, settings.pixel_weight)
    label, confidence = _top(fused)
    phase = two_step_phase(fused)
    if phase is not None:
        label, confidence = phase
    if raw_pixel is not None:
        h_label, h_conf = _top(header)
        p_label = _top(raw_pixel)[0]
        p_conf = sum(raw_pixel.get(k, 0.0) for k in _group_of(p_label, settings.pixel_groups))
        # Headers that are merely unsure (top `unknown`, no veto) let the pixels decide;
        # headers sure of a class that the pixels are sure is another: unknown.
        same_group = any(h_label in g and p_label in g for g in settings.pixel_groups)
        if (h_label != p_label and h_label != UNKNOWN and not same_group
                and h_conf >= settings.disagree_confidence
                and p_conf >= settings.disagree_confidence):
            return Decision(UNKNOWN, min(h_conf, p_conf), fused,  # as sure as the weaker expert
                            f"headers say {h_label} ({h_conf:.2f}), pixels say {p_label} ({p_conf:.2f})")
    if label == UNKNOWN:
        return Decision(UNKNOWN, confidence, fused, "no class fits the series")
    known_mass = max(1.0 - header.get(UNKNOWN, 0.0), 1e-9)  # headers unsure of the region
    if pixel is not None and (pixel.get(label, 0.0) < settings.pixel_support
                              or header.get(label, 0.0) / known_mass < settings.header_support):
        # A product of experts renormalised over few classes can crown a class neither
        # expert believes in; require real support from both.
        return Decision(UNKNOWN, 1.0 - confidence * min(pixel.get(label, 0.0), header.get(label, 0.0)), fused,
                        f"{label} lacks support: headers {header.get(label, 0.0):.2f}, "
                        f"pixels {pixel.get(label, 0.0):.2f}")
    if confidence < settings.min_confidence:
        return Decision(UNKNOWN, 1.0 - confidence, fused,
                        f"best guess {label} only {confidence:.2f} < {settings.min_confidence}")
    if pixel is None:
        return Decision(label, confidence, fused, "headers")
    agree = _top(header)[0] == label and label in _group_of(_top(raw_pixel)[0], settings.pixel_groups)
    return Decision(label, confidence, fused, "headers and pixels agree" if agree
                    else f"fused (headers {header.get(label, 0.0):.2f}, pixels {pixel.get(label, 0.0):.2f})")
