"""A phantom brain T1 series through the multi-contrast runtime and the derived-series
builder: three new MR series (T2, T1c, FLAIR), each named for its contrast, registered to
the source. Tiny random-weight export (fast, offline)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from pydicom import dcmread
from torch import nn

from dicom_synth.classify import classify_series
from dicom_synth.derived import build_derived_series
from dicom_synth.multicontrast import load_synthesis_model
from dicom_synth.registry import load_card
from dicom_synth.series import load_series
from models.brain.export import build_card, export_onnx
from models.brain.networks import BrainNetConfig, ConditionalTranslator
from models.brain.phantom_dicom import write_brain_series
from models.brain.train import CONFIGS

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("w")
    torch.manual_seed(0)
    t = ConditionalTranslator(BrainNetConfig(ngf=4, enc_blocks=1, dec_blocks=1))
    for p in t.parameters():
        nn.init.normal_(p, 0, 0.2)
    path = export_onnx(t, d / "brain_contrasts.onnx", 4)
    (d / "brain_contrasts.card.json").write_text(
        json.dumps(build_card("brain_contrasts", path, CONFIGS["tiny"], version="0.0.1")))
    return d


@pytest.mark.parametrize(("contrast", "expected"), [("t1", ["T2", "T1c", "FLAIR"]), ("flair", ["T1", "T2", "T1c"])])
def test_one_series_per_missing_contrast(tmp_path: Path, models_dir: Path, contrast: str, expected: list[str]) -> None:
    src = load_series(write_brain_series(tmp_path / "src", 53005, n_slices=8, size=128, contrast=contrast))
    label = classify_series(src.slices, src.volume).label
    card = load_card("brain_contrasts", models_dir)
    outputs = load_synthesis_model(card, threads=1).run(src.volume, source_label=label)
    assert [o.label for o in outputs] == expected
    uids = set()
    for i, out in enumerate(outputs):
        series = build_derived_series(src.slices, out.pixels, task=card.task, model_sha256=card.sha256, output_index=i,
                                      label=out.label,
                                      model_name=card.name, model_version=card.version, modality="MR")
        ds = dcmread(_roundtrip(series[0], tmp_path / f"{i}.dcm"))
        assert ds.SeriesDescription == f"SYNTHETIC {expected[i]}" and ds.SyntheticData == "YES"
        assert ds.FrameOfReferenceUID == src.slices[0].FrameOfReferenceUID
        assert "ContrastBolusAgent" not in ds  # a synthetic T1c claims no contrast agent
        uids.add(ds.SeriesInstanceUID)
    assert len(uids) == 3


def _roundtrip(ds, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path
