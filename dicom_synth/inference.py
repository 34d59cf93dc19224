"""Run a registered ONNX synthesis model on a volume, slice by slice, with the
normalisation and output mapping its card states. No torch: ONNX Runtime only."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from dicom_synth import intensity
from dicom_synth.domainguard import FEATURES_OUTPUT, sample_indices
from dicom_synth.registry import ModelCard


@dataclass(frozen=True)
class SyntheticOutput:
    """One synthesized series: float32 (N, H, W) >= 0 in stored-pixel units (the DICOM
    builder rounds to uint16), and a human label such as "DCE phase 1"."""

    label: str
    pixels: np.ndarray


def pick_providers(available: list[str] | None = None) -> list[str]:
    """CUDA when this onnxruntime build offers it, always with CPU as the fallback."""
    if available is None:
        import onnxruntime as ort

        available = ort.get_available_providers()
    return (["CUDAExecutionProvider"] if "CUDAExecutionProvider" in available else []) + [
        "CPUExecutionProvider"]


def output_names(session) -> tuple[str, bool]:
    """The graph's main (first) output and whether it also has a `features` output: a
    runner asks for outputs by name, so extra outputs never change what it reads."""
    names = [o.name for o in session.get_outputs()]
    return names[0], FEATURES_OUTPUT in names


def probe_features(session, feeds_for: Callable[[np.ndarray], dict[str, np.ndarray]], norm: np.ndarray,
                   multiple: int, pad_value: float, batch_size: int = 4) -> np.ndarray | None:
    """The `features` output (k, F) on the probed slices of a normalised (N, H, W) volume;
    None when the graph has none. `feeds_for(batch)` gives the feeds for an input batch."""
    if not output_names(session)[1]:
        return None
    planes = norm[sample_indices(norm.shape[0])]
    rows = []
    for start in range(0, len(planes), batch_size):
        padded, _ = pad_to_multiple(planes[start:start + batch_size, None], multiple, pad_value)
        (feat,) = session.run([FEATURES_OUTPUT], feeds_for(np.ascontiguousarray(padded)))
        rows.append(np.asarray(feat, np.float32).reshape(len(padded), -1))
    return np.concatenate(rows)


def pad_to_multiple(batch: np.ndarray, multiple: int, value: float) -> tuple[np.ndarray, tuple]:
    """Pad (B, C, H, W) at the bottom/right up to a multiple; returns the crop to undo it."""
    h, w = batch.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        batch = np.pad(batch, ((0, 0), (0, 0), (0, ph), (0, pw)), constant_values=value)
    return batch, (slice(0, h), slice(0, w))


class SynthesisModel:
    """An ONNX session plus the card that says how to feed it and read it."""

    def __init__(self, card: ModelCard, session, batch_size: int = 4):
        self.card = card
        self.session = session
        self.batch_size = max(1, int(batch_size))
        self.input_name = session.get_inputs()[0].name
        self.output_name, _ = output_names(session)
        self.multiple = int(card.input.get("spatial_multiple", 1))
        self.label = card.output_label or card.task

    @classmethod
    def from_card(cls, card: ModelCard, *, providers: list[str] | None = None,
                  threads: int | None = None, batch_size: int = 4) -> SynthesisModel:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = int(threads)
            opts.inter_op_num_threads = 1
        session = ort.InferenceSession(str(card.onnx_path), sess_options=opts,
                                       providers=providers or pick_providers())
        return cls(card, session, batch_size=batch_size)

    @property
    def providers(self) -> list[str]:
        return list(self.session.get_providers())

    def features(self, volume: np.ndarray, source_label: str | None = None) -> np.ndarray | None:
        """The graph's `features` (k, F) on the probed slices, for the domain guard."""
        norm = intensity.normalise(np.asarray(volume, np.float32), self.card.normalisation)
        lo = float(self.card.normalisation.get("range", (-1.0, 1.0))[0])
        return probe_features(self.session, lambda x: {self.input_name: x}, norm, self.multiple, lo,
                              self.batch_size)

    def run(self, volume: np.ndarray,
            progress: Callable[[float], None] | None = None) -> list[SyntheticOutput]:
        """(N, H, W) in source units -> synthesized series, any H and W."""
        vol = np.asarray(volume, dtype=np.float32)
        if vol.ndim == 2:
            vol = vol[None]
        if vol.ndim != 3 or min(vol.shape) < 1:
            raise ValueError(f"expected an (N, H, W) volume, got shape {vol.shape}")
        if not np.isfinite(vol).all():
            raise ValueError("volume contains NaN or infinite values")
        norm = intensity.normalise(vol, self.card.normalisation)
        lo = float(self.card.normalisation.get("range", (-1.0, 1.0))[0])
        out = np.empty_like(norm)
        n = norm.shape[0]
        for start in range(0, n, self.batch_size):
            batch = norm[start:start + self.batch_size, None]
            padded, crop = pad_to_multiple(batch, self.multiple, lo)
            (pred,) = self.session.run([self.output_name], {self.input_name: np.ascontiguousarray(padded)})
            out[start:start + len(batch)] = pred[:, 0][(slice(None), *crop)]
            if progress is not None:
                progress(min(1.0, (start + len(batch)) / n))
        stored = intensity.to_stored(out, self.card.output_mapping)
        return [SyntheticOutput(label=self.label, pixels=stored)]
