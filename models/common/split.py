"""Subject splits. Phantom subjects are split by seed range, so a seed alone says its split;
a hospital's series are split by patient, so no patient is in two splits."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class SeedSplits:
    """Seed ranges of 1000 per split: {"train": base, "val": base, "test": base}."""

    base: Mapping[str, int]

    def split_of(self, seed: int) -> str:
        """Which split a subject seed belongs to ("other" outside every range)."""
        for name, base in self.base.items():
            if base <= seed < base + 1000:
                return name
        return "other"

    def seeds(self, split: str, n: int) -> list[int]:
        """The first n subject seeds of a split."""
        if split not in self.base:
            raise ValueError(f"unknown split {split!r}; known: {sorted(self.base)}")
        if not 0 < n <= 1000:
            raise ValueError("n must be 1..1000")
        return [self.base[split] + i for i in range(n)]


HELD_OUT_SHARE = 0.2  # of the patients, at least one each, to validate and to test


def split_patients(patients: Iterable[str], n_val: int | None = None,
                   n_test: int | None = None) -> dict[str, list[str]]:
    """Patients to train / val / test, by a hash of the patient ID (stable whatever order
    the export lists them in): the last `n_test` in hash order test, the `n_val` before
    them validate, the rest train (by default `HELD_OUT_SHARE` of the patients each, rounded
    up). Raises ValueError, saying how many are needed, when no training patient is left."""
    ordered = sorted(set(patients), key=lambda p: hashlib.sha1(p.encode()).hexdigest())
    held = max(1, math.ceil(HELD_OUT_SHARE * len(ordered)))
    n_val = held if n_val is None else n_val
    n_test = held if n_test is None else n_test
    need = n_val + n_test + 1
    if len(ordered) < need:
        raise ValueError(f"{len(ordered)} patient(s); at least {need} are needed "
                         f"(1 to train, {n_val} to validate, {n_test} to test)")
    cut_val, cut_test = len(ordered) - n_val - n_test, len(ordered) - n_test
    return {"train": ordered[:cut_val], "val": ordered[cut_val:cut_test], "test": ordered[cut_test:]}
