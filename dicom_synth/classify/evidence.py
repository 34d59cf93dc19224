"""One line a person can read from a classification's evidence: the class, how sure, the
reason, and what each expert (header rules, pixel network) said on its own."""

from __future__ import annotations

from dicom_synth.classify.classifier import Classification


def _top(probabilities: dict | None) -> tuple[str, float] | None:
    if not probabilities:
        return None
    label, p = max(probabilities.items(), key=lambda kv: float(kv[1]))
    return str(label), float(p)


def experts_summary(evidence: dict | None) -> str:
    """`headers say brain_t1 (0.82), pixels say breast_dce_early (1.00)`."""
    evidence = evidence or {}
    parts = []
    for name, key in (("headers", "header_probabilities"), ("pixels", "pixel_probabilities")):
        top = _top(evidence.get(key))
        parts.append(f"{name} say {top[0]} ({top[1]:.2f})" if top else f"no {name[:-1]} verdict")
    return ", ".join(parts)


def evidence_summary(classification: Classification) -> str:
    """`class 'unknown' (confidence 1.00; no class fits the series): headers say ..., pixels say ...`."""
    evidence = classification.evidence or {}
    reason = evidence.get("reason")
    why = f"; {reason}" if reason else ""
    return (f"class {classification.label!r} (confidence {classification.confidence:.2f}{why}): "
            f"{experts_summary(evidence)}")
