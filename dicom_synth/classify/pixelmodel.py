"""The pixel model at run time: ONNX Runtime only (no torch), loaded once per process.

Input: a few representative slices of the series, each resized to SIZE x SIZE with two
channels (robustly normalised intensity; Hounsfield units mapped to 0..1 for CT, zeros
for MR). Output: one logit per label in `labels.LABELS` order; slice log-probabilities
are averaged over the series, then divided by the temperature stored in the model card.
"""

from __future__ import annotations

import json
import logging
import threading
from functools import lru_cache
from pathlib import Path

import numpy as np

from dicom_synth.classify.labels import LABELS
from dicom_synth.domainguard import FEATURES_OUTPUT
from dicom_synth.registry import ModelCard

log = logging.getLogger(__name__)

TASK = "series_classification"  # the registry key of the model card
SIZE = 128
N_SLICES = 3
WEIGHTS = Path(__file__).resolve().parents[2] / "models" / "weights" / "series_classifier.onnx"


def _resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Area-averaging (n_out, n_in) matrix: anti-aliased downsampling, linear upsampling."""
    if n_out >= n_in:
        pos = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
        lo = np.clip(np.floor(pos).astype(int), 0, n_in - 1)
        hi = np.clip(lo + 1, 0, n_in - 1)
        w = np.clip(pos - lo, 0, 1)
        m = np.zeros((n_out, n_in), dtype=np.float32)
        m[np.arange(n_out), lo] += 1 - w
        m[np.arange(n_out), hi] += w
        return m
    edges = np.arange(n_out + 1) * n_in / n_out
    m = np.zeros((n_out, n_in), dtype=np.float32)
    for i in range(n_out):
        a, b = edges[i], edges[i + 1]
        j0, j1 = int(np.floor(a)), int(np.ceil(b))
        for j in range(j0, min(j1, n_in)):
            m[i, j] = min(b, j + 1) - max(a, j)
        m[i] /= m[i].sum()
    return m


def resize_square(image: np.ndarray, size: int = SIZE) -> np.ndarray:
    """Pad to a square (with the image minimum) and resize to size x size."""
    h, w = image.shape
    n = max(h, w)
    padded = np.full((n, n), float(image.min()), dtype=np.float32)
    padded[(n - h) // 2:(n - h) // 2 + h, (n - w) // 2:(n - w) // 2 + w] = image
    m = _resize_matrix(n, size)
    return m @ padded @ m.T


def representative_slices(volume: np.ndarray, n: int = N_SLICES) -> np.ndarray:
    """n slices at 30 %, 50 %, 70 % of the stack (all slices when there are no more)."""
    depth = volume.shape[0]
    if depth <= n:
        return volume
    idx = np.unique(np.linspace(0.3 * (depth - 1), 0.7 * (depth - 1), n).round().astype(int))
    return volume[idx]


def preprocess(volume: np.ndarray, is_ct: bool) -> np.ndarray:
    """(k, 2, SIZE, SIZE) float32 network input from a (N, H, W) volume in modality units."""
    vol = np.asarray(volume, dtype=np.float32)
    if vol.ndim == 2:
        vol = vol[None]
    planes = np.nan_to_num(representative_slices(vol))
    lo, hi = np.percentile(planes, [1.0, 99.5])  # over the slices the network sees
    out = []
    for plane in planes:
        small = resize_square(plane)
        norm = np.clip((small - lo) / max(hi - lo, 1e-6), 0, 1.5)
        hu = np.clip((small + 1000.0) / 3000.0, 0, 1) if is_ct else np.zeros_like(small)
        out.append(np.stack([norm, hu]))
    return np.stack(out).astype(np.float32)


class PixelModel:
    """An ONNX series classifier with its model card."""

    def __init__(self, path: Path):
        import onnxruntime as ort  # imported here: a runtime without the model needs no ORT

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        outputs = [o.name for o in self.session.get_outputs()]
        self.output_name, self.has_features = outputs[0], FEATURES_OUTPUT in outputs
        card_path = path.with_suffix(".card.json")
        self.card = json.loads(card_path.read_text()) if card_path.exists() else {}
        self.model_card = ModelCard.from_dict(self.card, card_path=card_path) if self.card else None
        mapping = self.card.get("output_mapping", {})
        self.labels = tuple(mapping.get("labels", LABELS))
        self.temperature = float(mapping.get("temperature", 1.0))
        self._lock = threading.Lock()

    def predict(self, volume: np.ndarray, is_ct: bool) -> dict[str, float]:
        """Label probabilities for the series (mean slice log-probability, tempered)."""
        return self.predict_with_features(volume, is_ct)[0]

    def predict_with_features(self, volume: np.ndarray, is_ct: bool) -> tuple[dict[str, float], np.ndarray | None]:
        """The probabilities and the graph's `features` (one row per slice it saw; None
        when the graph has no such output), for the domain guard."""
        x = preprocess(volume, is_ct)
        names = [self.output_name, FEATURES_OUTPUT] if self.has_features else [self.output_name]
        with self._lock:
            results = self.session.run(names, {self.input_name: x})
        logits = results[0]
        features = np.asarray(results[1], np.float32).reshape(len(x), -1) if self.has_features else None
        logits = logits - logits.max(axis=1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        mean = logp.mean(axis=0) / self.temperature
        p = np.exp(mean - mean.max())
        p /= p.sum()
        probs = dict.fromkeys(LABELS, 0.0)
        probs.update({lbl: float(v) for lbl, v in zip(self.labels, p, strict=True)})
        return probs, features


@lru_cache(maxsize=4)
def load_pixel_model(path: Path | None = None) -> PixelModel | None:
    """The model at `path`, else the registry's `series_classification` card (in
    SYNTH_MODELS_DIR when set, else the packaged weights; sha256 checked). None when there
    is no usable model: classification then runs on headers alone."""
    if path is None:
        from dicom_synth.registry import load_card

        try:
            from dicom_synth.settings import get_settings

            models_dir = get_settings().models_dir
        except Exception:
            models_dir = None
        try:
            path = load_card(TASK, models_dir).onnx_path
        except Exception as exc:  # no card, missing file, checksum mismatch
            log.warning("series classifier pixel model unavailable: %s", exc)
            return None
    path = Path(path)
    if not path.exists():
        return None
    return PixelModel(path)
