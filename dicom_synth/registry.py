"""Model registry: each task name maps to an ONNX file and the model card beside it
(`<name>.onnx` + `<name>.card.json`). The card says what the network expects and how its
output becomes stored pixels, so the worker never guesses. No torch, no onnxruntime here:
reading a card must be cheap enough for a health check.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CARD_SUFFIX = ".card.json"
_REQUIRED = ("name", "task", "version", "onnx_file", "sha256", "input", "normalisation",
             "output_mapping", "intended_use")


class UnknownModelError(KeyError):
    """No card for a task; the message lists the tasks that have one."""

    def __init__(self, task: str, known: list[str], models_dir: Path):
        self.task, self.known, self.models_dir = task, known, models_dir
        super().__init__(f"no model for task {task!r} in {models_dir}; known: "
                         f"{', '.join(known) if known else '(none)'}")

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return str(self.args[0])


class ModelIntegrityError(ValueError):
    """The ONNX file is missing or its sha256 does not match the card."""


@dataclass(frozen=True)
class ModelCard:
    """What a model is, what it takes and gives, on what it was trained and how well it did."""

    name: str
    task: str
    version: str
    onnx_file: str
    sha256: str
    input: Mapping[str, Any]  # name, layout NCHW, channels, spatial_multiple, dtype
    normalisation: Mapping[str, Any]  # e.g. {"kind": "per_slice_minmax", "range": [-1, 1]}
    output_mapping: Mapping[str, Any]  # how [-1, 1] becomes stored pixel values
    intended_use: str
    output_label: str = ""
    training_data: Mapping[str, Any] = field(default_factory=dict)
    metrics: Mapping[str, Any] = field(default_factory=dict)
    limitations: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)
    card_path: Path | None = None

    @property
    def onnx_path(self) -> Path:
        base = self.card_path.parent if self.card_path else Path(".")
        return base / self.onnx_file

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], card_path: Path | None = None) -> ModelCard:
        missing = [k for k in _REQUIRED if k not in data]
        if missing:
            raise ValueError(f"model card {card_path} lacks {', '.join(missing)}")
        known = {f for f in cls.__dataclass_fields__ if f not in ("extra", "card_path")}
        extra = {k: v for k, v in data.items() if k not in known}
        return cls(**{k: v for k, v in data.items() if k in known}, extra=extra,
                   card_path=card_path)

    def to_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__
               if k not in ("extra", "card_path")}
        out.update(self.extra)
        return json.loads(json.dumps(out))


def default_models_dir() -> Path:
    """`models/weights` beside the `dicom_synth` package (a checkout or an installed wheel)."""
    return Path(__file__).resolve().parents[1] / "models" / "weights"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def list_cards(models_dir: Path | None = None) -> list[ModelCard]:
    """Every readable card in the directory (unreadable ones are skipped, not fatal)."""
    d = Path(models_dir) if models_dir else default_models_dir()
    cards = []
    for p in sorted(d.glob(f"*{CARD_SUFFIX}")) if d.is_dir() else []:
        try:
            cards.append(ModelCard.from_dict(json.loads(p.read_text()), card_path=p))
        except (ValueError, TypeError):
            continue
    return cards


def known_tasks(models_dir: Path | None = None) -> list[str]:
    """Task names that have a model card."""
    return sorted({c.task for c in list_cards(models_dir)})


def _version_key(v: str) -> tuple:
    return tuple(int(p) if p.isdigit() else 0 for p in v.split("."))


def load_card(task: str, models_dir: Path | None = None, *, verify: bool = True) -> ModelCard:
    """The card for a task (the highest version if several), its ONNX file checked by sha256."""
    d = Path(models_dir) if models_dir else default_models_dir()
    task = str(task)
    cards = [c for c in list_cards(d) if c.task == task or c.name == task]
    if not cards:
        raise UnknownModelError(task, known_tasks(d), d)
    card = max(cards, key=lambda c: _version_key(c.version))
    if verify:
        verify_card(card)
    return card


def verify_card(card: ModelCard) -> None:
    """Raise ModelIntegrityError unless the ONNX file exists and matches the card's sha256."""
    path = card.onnx_path
    if not path.is_file():
        raise ModelIntegrityError(f"{card.name}: ONNX file {path} is missing")
    digest = sha256_file(path)
    if digest != card.sha256:
        raise ModelIntegrityError(f"{card.name}: sha256 of {path} is {digest}, card says "
                                  f"{card.sha256}")
