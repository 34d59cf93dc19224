"""The config dataclasses of every family: one way to a checkpoint's or a card's dict and back
(`Config`), and the options every family's training run has (`RunConfig`). A family's
`TrainConfig` adds its data, losses and network; its `RETIRED` options (tried and removed,
models/EXPERIMENTS.md) still load from an old checkpoint when they hold the value that had
them off."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar


def without_retired(options: Mapping[str, Any], retired: Mapping[str, Any]) -> dict:
    """A saved config's options without those since removed (models/EXPERIMENTS.md). Each must
    hold the value that had it off (`retired`; None: any value), or the run used something this
    code no longer has."""
    out = dict(options)
    for key, off in retired.items():
        if key in out:
            value = out.pop(key)
            value = list(value) if isinstance(value, tuple) else value
            if off is not None and value != off:
                raise ValueError(f"option {key}={value!r} was removed (models/EXPERIMENTS.md)")
    return out


def _tuples(value: Any) -> Any:
    """JSON's lists back to the tuples a frozen config holds (nested too)."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list | tuple) else value


@dataclass(frozen=True)
class Config:
    """A frozen options dataclass that goes to a dict (checkpoint, card) and back: nested
    configs by their own `from_dict`, lists as tuples, retired options dropped."""

    RETIRED: ClassVar[Mapping[str, Any]] = {}

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Any:
        """From a checkpoint or a card (which may still list the retired options, off)."""
        d = without_retired(d, cls.RETIRED)
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            kind = hints[f.name]
            if f.name in d and isinstance(kind, type) and issubclass(kind, Config):
                d[f.name] = kind.from_dict(d[f.name])
            elif f.name in d:
                d[f.name] = _tuples(d[f.name])
        return cls(**d)


@dataclass(frozen=True)
class RunConfig(Config):
    """What every family's run sets: its config's name, the phantom's scale (subjects, slices,
    matrix), crops, batch, steps, Adam, validation, seed, threads and device. Defaults: the
    CPU demo of brain and CT. A subclass has a `net` with `spatial_multiple`."""

    name: str = "small"
    n_train: int = 24
    n_val: int = 2
    slices_per_subject: int = 12
    size: int = 128
    crop: int = 64
    batch_size: int = 2
    steps: int = 3000
    lr: float = 2e-4
    beta1: float = 0.5
    full_size_from: float = 0.8  # last 20 % of steps on whole slices (instance-norm statistics as exported)
    mirror: bool = True
    val_every: int = 250
    seed: int = 0
    threads: int = 2
    device: str = "cpu"

    def sides(self) -> dict[str, int]:
        """The image sides the network sees in training, by name."""
        return {"crop": self.crop, "size": self.size}

    def __post_init__(self) -> None:
        m = self.net.spatial_multiple  # type: ignore[attr-defined]
        sides = self.sides()
        if any(v % m for v in sides.values()):
            raise ValueError(" and ".join(f"{k} {v}" for k, v in sides.items()) + f" must be multiples of {m}")
