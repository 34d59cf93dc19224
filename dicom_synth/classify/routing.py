"""The routing table: series class -> task name, from a YAML file a user edits."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import yaml

from dicom_synth.classify.labels import LABELS, UNKNOWN
from dicom_synth.domain import Task

DEFAULT_ROUTING = Path(__file__).with_name("routing.yaml")


class RoutingError(ValueError):
    """The routing file names a class or task that does not exist."""


@dataclass(frozen=True)
class RoutingTable:
    routes: dict[str, str]

    def route(self, label: str) -> str | None:
        """The task for a series class, or None (no synthesis; the job is skipped)."""
        return self.routes.get(label)

    @classmethod
    def from_mapping(cls, routes: dict) -> RoutingTable:
        tasks = {t.value for t in Task}
        checked: dict[str, str] = {}
        for label, task in (routes or {}).items():
            label, task = str(label), None if task is None else str(task)
            if label not in LABELS:
                raise RoutingError(f"unknown series class {label!r}; valid: {', '.join(LABELS)}")
            if label == UNKNOWN and task is not None:
                raise RoutingError("`unknown` cannot be routed: an unrecognised series gets no task")
            if task is None:
                continue
            if task not in tasks:
                raise RoutingError(f"unknown task {task!r} for {label!r}; valid: {', '.join(sorted(tasks))}")
            checked[label] = task
        return cls(checked)


def load_routing(path: Path | None = None) -> RoutingTable:
    """The routing table in `path` (default: the packaged routing.yaml); re-read when the
    file changes, so a user's edit takes effect on the next job."""
    path = Path(path or DEFAULT_ROUTING)
    return _load(path, path.stat().st_mtime_ns)


@lru_cache(maxsize=8)
def _load(path: Path, _mtime: int) -> RoutingTable:
    with open(path, encoding="utf-8") as fh:
        doc = yaml.safe_load(fh) or {}
    if not isinstance(doc, dict) or not isinstance(doc.get("routes", {}), dict):
        raise RoutingError("routing file must hold a mapping `routes: {class: task}`")
    return RoutingTable.from_mapping(doc.get("routes") or {})
