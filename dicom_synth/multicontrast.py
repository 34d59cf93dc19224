"""Run the CT -> pseudo-MRI model (seed 004) and the conditional brain-contrast model
(seed 002) from their ONNX files and cards; any other card falls back to
`SynthesisModel`, so the worker can load every task through `load_synthesis_model`.

The card's `runtime` field picks the runner:
- "pseudo_mri": one input (N, 1, H, W); CT in Hounsfield units is clipped to the card's
  HU window and scaled linearly to [-1, 1] (absolute HU carry the tissue information, so no
  per-slice scaling); one output series.
- "conditional_contrast": inputs `input` (N, 1, H, W) and `condition` (N, C), a one-hot
  target contrast (and `source` (N, C), the input's contrast, when the card's conditioning
  names a `source_input`); the source is per-slice min-max scaled as the card says; one
  output series per contrast the study lacks (every card contrast except the source's).

numpy + onnxruntime only (no torch, no scipy): this runs inside the worker.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from dicom_synth import intensity
from dicom_synth.inference import (
    SynthesisModel,
    SyntheticOutput,
    output_names,
    pad_to_multiple,
    pick_providers,
    probe_features,
)
from dicom_synth.registry import ModelCard

HU_WINDOW = "hu_window"
HU_CURVE = "hu_curve"
PSEUDO_MRI = "pseudo_mri"
CONDITIONAL = "conditional_contrast"
Progress = Callable[[float], None] | None


class Synthesizer(Protocol):
    card: ModelCard

    def run(self, volume: np.ndarray, progress: Progress = None, *,
            source_label: str | None = None) -> list[SyntheticOutput]: ...

    def features(self, volume: np.ndarray, source_label: str | None = None) -> np.ndarray | None: ...


def hu_window(volume: np.ndarray, window: tuple[float, float] = (-1000.0, 1000.0),
              lo: float = -1.0, hi: float = 1.0) -> np.ndarray:
    """HU clipped to the window and mapped linearly to [lo, hi] (training uses this too)."""
    w0, w1 = float(window[0]), float(window[1])
    if w1 <= w0:
        raise ValueError(f"empty HU window {window}")
    v = (np.clip(np.asarray(volume, np.float32), w0, w1) - w0) / (w1 - w0)
    return (lo + (hi - lo) * v).astype(np.float32)


def hu_curve(volume: np.ndarray, knots_hu: Sequence[float], values: Sequence[float]) -> np.ndarray:
    """HU through a monotone piecewise-linear curve (clamped at both ends): a window that
    spends more of [-1, 1] on soft tissue than on air and bone (training uses this too)."""
    k, v = np.asarray(knots_hu, np.float64), np.asarray(values, np.float64)
    if k.ndim != 1 or k.shape != v.shape or len(k) < 2 or np.any(np.diff(k) <= 0) or np.any(np.diff(v) < 0):
        raise ValueError("hu_curve needs >= 2 increasing HU knots and non-decreasing values of the same length")
    return np.interp(np.asarray(volume, np.float32), k, v).astype(np.float32)


def normalise(volume: np.ndarray, spec: Mapping[str, Any]) -> np.ndarray:
    """The card's input normalisation: an HU window or curve, or whatever `intensity` knows."""
    if spec.get("kind") == HU_WINDOW:
        lo, hi = spec.get("range", (-1.0, 1.0))
        return hu_window(volume, tuple(spec["window_hu"]), float(lo), float(hi))
    if spec.get("kind") == HU_CURVE:
        return hu_curve(volume, spec["knots_hu"], spec["values"])
    return intensity.normalise(volume, spec)


def _check(volume: np.ndarray) -> np.ndarray:
    vol = np.asarray(volume, dtype=np.float32)
    if vol.ndim == 2:
        vol = vol[None]
    if vol.ndim != 3 or min(vol.shape) < 1:
        raise ValueError(f"expected an (N, H, W) volume, got shape {vol.shape}")
    if not np.isfinite(vol).all():
        raise ValueError("volume contains NaN or infinite values")
    return vol


def _session(card: ModelCard, providers: list[str] | None, threads: int | None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(card.onnx_path), sess_options=opts,
                                providers=providers or pick_providers())


class _OnnxRunner:
    """Shared batching: normalise, pad to the network's multiple, run, crop back."""

    def __init__(self, card: ModelCard, session, batch_size: int = 4):
        self.card, self.session = card, session
        self.batch_size = max(1, int(batch_size))
        self.input_name = str(card.input.get("name", "input"))
        self.output_name, _ = output_names(session)
        self.multiple = int(card.input.get("spatial_multiple", 1))
        self.pad_value = float(card.normalisation.get("range", (-1.0, 1.0))[0])

    def _extra_feeds(self, source_label: str | None) -> dict[str, np.ndarray]:
        """Inputs besides the image (per-row vectors), for the feature probe."""
        return {}

    def features(self, volume: np.ndarray, source_label: str | None = None) -> np.ndarray | None:
        """The graph's `features` (k, F) on the probed slices, for the domain guard."""
        norm = normalise(_check(volume), self.card.normalisation)
        extra = self._extra_feeds(source_label)

        def feeds(x: np.ndarray) -> dict[str, np.ndarray]:
            return {self.input_name: x, **{k: np.repeat(v[None], len(x), axis=0) for k, v in extra.items()}}

        return probe_features(self.session, feeds, norm, self.multiple, self.pad_value, self.batch_size)

    @property
    def providers(self) -> list[str]:
        return list(self.session.get_providers())

    def _predict(self, norm: np.ndarray, extra: dict[str, np.ndarray] | None,
                 tick: Callable[[int], None]) -> np.ndarray:
        out = np.empty_like(norm)
        for start in range(0, norm.shape[0], self.batch_size):
            batch = norm[start:start + self.batch_size, None]
            padded, crop = pad_to_multiple(batch, self.multiple, self.pad_value)
            feeds = {self.input_name: np.ascontiguousarray(padded)}
            for name, row in (extra or {}).items():
                feeds[name] = np.repeat(row[None], len(batch), axis=0)
            (pred,) = self.session.run([self.output_name], feeds)
            out[start:start + len(batch)] = pred[:, 0][(slice(None), *crop)]
            tick(len(batch))
        return out


def _ticker(total: int, progress: Progress) -> Callable[[int], None]:
    done = [0]

    def tick(n: int) -> None:
        done[0] += n
        if progress is not None:
            progress(min(1.0, done[0] / max(total, 1)))

    return tick


def enclosed(mask: np.ndarray) -> np.ndarray:
    """(N, H, W) bool: pixels with `mask` on both sides along their row and their column
    (air inside the body: airway, lung, bowel gas; the air around it is not)."""
    def run(a: np.ndarray, axis: int) -> np.ndarray:
        fwd = np.maximum.accumulate(a, axis=axis)
        back = np.flip(np.maximum.accumulate(np.flip(a, axis=axis), axis=axis), axis=axis)
        return fwd & back

    return run(mask, 1) & run(mask, 2)


def signal_void(pred: np.ndarray, hu: np.ndarray, spec: Mapping[str, Any] | None) -> np.ndarray:
    """Air has no MR signal: where the CT is below `spec["below_hu"]` inside the body, the
    pseudo-MRI takes `spec["value"]` (the darkest output). Unpaired CycleGANs can draw an
    airway bright, and a reader would take that for fluid. The air around the body keeps the
    network's own background. No spec (older cards): unchanged."""
    if not spec:
        return pred
    air = hu < float(spec["below_hu"])
    return np.where(air & enclosed(~air), np.float32(spec["value"]), pred).astype(np.float32)


class PseudoMRIModel(_OnnxRunner):
    """CT (HU) -> one pseudo-MRI series in the CT's own geometry."""

    def run(self, volume: np.ndarray, progress: Progress = None, *,
            source_label: str | None = None) -> list[SyntheticOutput]:
        vol = _check(volume)
        norm = normalise(vol, self.card.normalisation)
        pred = signal_void(self._predict(norm, None, _ticker(vol.shape[0], progress)), vol,
                           self.card.extra.get("signal_void"))
        stored = intensity.to_stored(pred, self.card.output_mapping)
        return [SyntheticOutput(label=self.card.output_label or "pseudo-MRI", pixels=stored)]


class MultiContrastModel(_OnnxRunner):
    """One brain contrast -> the contrasts the study lacks, one series each."""

    def __init__(self, card: ModelCard, session, batch_size: int = 4):
        super().__init__(card, session, batch_size)
        cond = card.extra.get("conditioning") or {}
        self.contrasts: list[str] = list(cond.get("contrasts") or [])
        if not self.contrasts:
            raise ValueError(f"{card.name}: card has no conditioning.contrasts")
        self.cond_input = str(cond.get("input", "condition"))
        self.source_input = cond.get("source_input")  # a graph that also takes the source contrast
        self.labels: dict[str, str] = dict(cond.get("labels") or {})
        self.source_labels: dict[str, str] = dict(cond.get("source_labels") or {})

    def source_contrast(self, source_label: str | None) -> str:
        """'brain_t1' (a classifier label) or 't1' (a contrast) -> 't1'."""
        if source_label is None:
            raise ValueError(f"{self.card.name} needs the source series' label (one of "
                             f"{sorted(self.source_labels)}) to know which contrasts are missing")
        key = str(source_label)
        contrast = self.source_labels.get(key, key if key in self.contrasts else None)
        if contrast is None:
            raise ValueError(f"{self.card.name} cannot translate from {source_label!r}; known: "
                             f"{sorted(self.source_labels) + self.contrasts}")
        return contrast

    def _extra_feeds(self, source_label: str | None) -> dict[str, np.ndarray]:
        """The encoder's features do not depend on the target; a source the runner cannot
        name is probed as the card's first contrast."""
        try:
            src = self.source_contrast(source_label)
        except ValueError:
            src = self.contrasts[0]
        eye = np.eye(len(self.contrasts), dtype=np.float32)
        target = next(c for c in self.contrasts if c != src)
        feeds = {self.cond_input: eye[self.contrasts.index(target)]}
        if self.source_input:
            feeds[str(self.source_input)] = eye[self.contrasts.index(src)]
        return feeds

    def run(self, volume: np.ndarray, progress: Progress = None, *,
            source_label: str | None = None) -> list[SyntheticOutput]:
        src = self.source_contrast(source_label)
        targets = [c for c in self.contrasts if c != src]
        vol = _check(volume)
        norm = normalise(vol, self.card.normalisation)
        tick = _ticker(vol.shape[0] * len(targets), progress)
        eye = np.eye(len(self.contrasts), dtype=np.float32)
        source = {str(self.source_input): eye[self.contrasts.index(src)]} if self.source_input else {}
        outputs = []
        for target in targets:
            pred = self._predict(norm, {self.cond_input: eye[self.contrasts.index(target)], **source}, tick)
            outputs.append(SyntheticOutput(label=self.labels.get(target, target.upper()),
                                           pixels=intensity.to_stored(pred, self.card.output_mapping)))
        return outputs


class _Plain:
    """A `SynthesisModel` behind the same call signature (the source label is not needed)."""

    def __init__(self, model: SynthesisModel):
        self.model = model
        self.card = model.card

    @property
    def providers(self) -> list[str]:
        return self.model.providers

    def run(self, volume: np.ndarray, progress: Progress = None, *,
            source_label: str | None = None) -> list[SyntheticOutput]:
        return self.model.run(volume, progress)

    def features(self, volume: np.ndarray, source_label: str | None = None) -> np.ndarray | None:
        return self.model.features(volume)


_RUNNERS: dict[str, type[_OnnxRunner]] = {PSEUDO_MRI: PseudoMRIModel, CONDITIONAL: MultiContrastModel}


def load_synthesis_model(card: ModelCard, *, providers: list[str] | None = None,
                         threads: int | None = None, batch_size: int = 4) -> Synthesizer:
    """The runner the card asks for (its `runtime` field), else the plain `SynthesisModel`."""
    runner = _RUNNERS.get(str(card.extra.get("runtime", "")))
    if runner is None:
        return _Plain(SynthesisModel.from_card(card, providers=providers, threads=threads,
                                               batch_size=batch_size))
    return runner(card, _session(card, providers, threads), batch_size=batch_size)
