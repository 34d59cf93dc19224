"""A declarative header model: rules from YAML, each testing facts and voting for labels.

A rule fires when every `when` condition holds, at least one `any` condition holds (if
given), and no `unless` condition holds (MONAI Deploy's selector style: regexes on
attributes, numeric ranges, include/exclude). A fired rule adds its `votes` (label globs
to log-odds weights) and removes its `veto` labels. Scores become probabilities by a
softmax with the file's `temperature` (fitted on the phantom headers), so header
confidence can be fused with the pixel model's.
"""

from __future__ import annotations

import fnmatch
import math
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import yaml

from dicom_synth.classify.facts import Facts
from dicom_synth.classify.labels import LABELS, UNKNOWN

DEFAULT_RULES = Path(__file__).with_name("rules.yaml")


class RulesError(ValueError):
    """The rules file is malformed; the message names the rule and the problem."""


@dataclass(frozen=True)
class Condition:
    fact: str
    test: object  # str regex, [lo, hi] range, bool, or None (fact absent)

    def holds(self, facts: Facts) -> bool:
        value = facts.get(self.fact)
        test = self.test
        if test is None:
            return value in (None, "", [], ())
        if isinstance(test, bool):
            return bool(value) is test
        if isinstance(test, re.Pattern):
            if value is None:
                return False
            items = value if isinstance(value, (list, tuple)) else [value]
            return any(test.search(str(v)) for v in items)
        lo, hi = test  # type: ignore[misc]
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return False
        return (lo is None or value >= lo) and (hi is None or value <= hi)


@dataclass(frozen=True)
class Rule:
    id: str
    why: str
    when: tuple[Condition, ...]
    any: tuple[Condition, ...]
    unless: tuple[Condition, ...]
    votes: dict[str, float]
    veto: tuple[str, ...]

    def fires(self, facts: Facts) -> bool:
        return (
            all(c.holds(facts) for c in self.when)
            and (not self.any or any(c.holds(facts) for c in self.any))
            and not any(c.holds(facts) for c in self.unless)
        )


@dataclass(frozen=True)
class RuleSet:
    rules: tuple[Rule, ...]
    priors: dict[str, float]
    temperature: float
    settings: dict = field(default_factory=dict)

    def score(self, facts: Facts) -> tuple[dict[str, float], list[str]]:
        """Label probabilities and the ids of the rules that fired."""
        scores = {label: self.priors.get(label, 0.0) for label in LABELS}
        vetoed: set[str] = set()
        fired: list[str] = []
        for rule in self.rules:
            if not rule.fires(facts):
                continue
            fired.append(rule.id)
            for pattern, weight in rule.votes.items():
                for label in _expand(pattern):
                    scores[label] += weight
            for pattern in rule.veto:
                vetoed.update(lbl for lbl in _expand(pattern) if lbl != UNKNOWN)
        live = {lbl: s / self.temperature for lbl, s in scores.items() if lbl not in vetoed}
        top = max(live.values())
        exp = {lbl: math.exp(s - top) for lbl, s in live.items()}
        total = sum(exp.values())
        probs = {lbl: exp.get(lbl, 0.0) / total for lbl in LABELS}
        return probs, fired


@lru_cache(maxsize=64)
def _expand(pattern: str) -> tuple[str, ...]:
    return tuple(lbl for lbl in LABELS if fnmatch.fnmatchcase(lbl, pattern))


def _condition(rule_id: str, fact: str, spec: object) -> Condition:
    if spec is None or isinstance(spec, bool):
        return Condition(fact, spec)
    if isinstance(spec, str):
        try:
            return Condition(fact, re.compile(spec, re.IGNORECASE))
        except re.error as exc:
            raise RulesError(f"rule {rule_id!r}: bad regex for {fact}: {exc}") from exc
    if isinstance(spec, list) and len(spec) == 2 and all(
        v is None or isinstance(v, (int, float)) for v in spec
    ):
        return Condition(fact, (spec[0], spec[1]))
    raise RulesError(f"rule {rule_id!r}: {fact}: expected regex, [min, max], true/false or null")


def _conditions(rule_id: str, block: object) -> tuple[Condition, ...]:
    if block is None:
        return ()
    if not isinstance(block, dict):
        raise RulesError(f"rule {rule_id!r}: conditions must be a mapping of fact to test")
    return tuple(_condition(rule_id, fact, spec) for fact, spec in block.items())


def parse_rules(doc: dict) -> RuleSet:
    """A RuleSet from the parsed YAML document; raises RulesError naming the bad rule."""
    rules = []
    seen: set[str] = set()
    for i, raw in enumerate(doc.get("rules") or []):
        rule_id = str(raw.get("id") or f"#{i}")
        if rule_id in seen:
            raise RulesError(f"duplicate rule id {rule_id!r}")
        seen.add(rule_id)
        unknown_keys = set(raw) - {"id", "why", "when", "any", "unless", "votes", "veto"}
        if unknown_keys:
            raise RulesError(f"rule {rule_id!r}: unknown keys {sorted(unknown_keys)}")
        votes = {str(k): float(v) for k, v in (raw.get("votes") or {}).items()}
        veto = tuple(str(v) for v in (raw.get("veto") or []))
        for pattern in list(votes) + list(veto):
            if not _expand(pattern):
                raise RulesError(f"rule {rule_id!r}: {pattern!r} matches no label")
        rules.append(Rule(rule_id, str(raw.get("why", "")), _conditions(rule_id, raw.get("when")),
                          _conditions(rule_id, raw.get("any")),
                          _conditions(rule_id, raw.get("unless")), votes, veto))
    priors = {str(k): float(v) for k, v in (doc.get("priors") or {}).items()}
    temperature = float(doc.get("temperature", 1.0))
    if temperature <= 0:
        raise RulesError("temperature must be positive")
    return RuleSet(tuple(rules), priors, temperature, dict(doc.get("settings") or {}))


def load_rules(path: Path | None = None) -> RuleSet:
    """The rules in `path` (default: the packaged rules.yaml); parsed again only when the
    file changes."""
    path = Path(path or DEFAULT_RULES)
    return _load(path, path.stat().st_mtime_ns)


@lru_cache(maxsize=8)
def _load(path: Path, _mtime: int) -> RuleSet:
    with open(path, encoding="utf-8") as fh:
        return parse_rules(yaml.safe_load(fh) or {})
