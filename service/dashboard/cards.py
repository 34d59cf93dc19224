"""The model cards as the Models page shows them: task, version, training data, metrics,
domain and sha256, nested values flattened into `a › b › c: value` rows."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from dicom_synth.registry import list_cards, sha256_file
from dicom_synth.settings import Settings
from service.dashboard.format import flatten


@dataclass(frozen=True)
class CardView:
    name: str
    task: str
    version: str
    sha256: str
    file_ok: bool | None  # the ONNX file matches the card's sha256 (None: the file is missing)
    intended_use: str
    limitations: str
    training_data: list[tuple[str, str]]
    metrics: list[tuple[str, str]]
    domain: list[tuple[str, str]]


@lru_cache(maxsize=32)
def _digest(path: Path, mtime: float, size: int) -> str:  # noqa: ARG001 (cache key: a changed file is hashed again)
    return sha256_file(path)


def card_views(settings: Settings) -> list[CardView]:
    views = []
    for card in sorted(list_cards(settings.models_dir), key=lambda c: (c.task, c.version)):
        path = card.onnx_path
        views.append(CardView(
            name=card.name, task=card.task, version=card.version, sha256=card.sha256,
            file_ok=(_digest(path, path.stat().st_mtime, path.stat().st_size) == card.sha256)
            if path.is_file() else None,
            intended_use=card.intended_use, limitations=card.limitations,
            training_data=list(flatten(card.training_data)), metrics=list(flatten(card.metrics)),
            domain=list(flatten(card.extra.get("domain") or {})),
        ))
    return views
