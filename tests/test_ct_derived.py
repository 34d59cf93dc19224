"""A phantom planning CT through the pseudo-MRI runtime and the derived-series builder: one
MR Image Storage series, SYNTHETIC, in the CT's frame of reference and geometry (seed 004's
point: no registration). The ONNX file is a tiny random-weight export (fast, offline)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pydicom import dcmread
from pydicom.uid import MRImageStorage
from torch import nn

from dicom_synth.derived import build_derived_series, write_series
from dicom_synth.multicontrast import load_synthesis_model
from dicom_synth.registry import load_card
from dicom_synth.series import load_series
from models.ct.export import build_card, export_onnx
from models.ct.networks import CycleNetConfig, ResnetGenerator
from models.ct.phantom_dicom import write_ct_series
from models.ct.train import CONFIGS

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("w")
    torch.manual_seed(0)
    g = ResnetGenerator(CycleNetConfig(ngf=4))
    for p in g.parameters():
        nn.init.normal_(p, 0, 0.2)
    path = export_onnx(g, d / "pseudo_mri.onnx")
    card = build_card("pseudo_mri", path, CONFIGS["tiny"], version="0.0.1")
    (d / "pseudo_mri.card.json").write_text(json.dumps(card))
    return d


@pytest.mark.parametrize("region", ["abdomen", "head_neck"])
def test_ct_series_becomes_one_registered_synthetic_mr_series(tmp_path: Path, models_dir: Path, region: str) -> None:
    src = load_series(write_ct_series(tmp_path / "ct", 43005, n_slices=5, size=96, region=region))
    card = load_card("pseudo_mri", models_dir)
    outputs = load_synthesis_model(card, threads=1).run(src.volume, source_label=f"ct_{region}")
    assert len(outputs) == 1
    out = outputs[0]
    datasets = build_derived_series(src.slices, out.pixels, task=card.task, model_sha256=card.sha256, output_index=0,
                                    label=out.label,
                                    model_name=card.name, model_version=card.version,
                                    modality=card.extra["output_modality"])
    files = write_series(datasets, tmp_path / "out")
    written = [dcmread(f) for f in files]
    assert len(written) == 5
    for ds, s in zip(written, src.slices, strict=True):
        assert ds.SOPClassUID == MRImageStorage and ds.Modality == "MR"
        assert ds.SyntheticData == "YES" and ds.SeriesDescription.startswith("SYNTHETIC pseudo-MRI")
        assert ds.FrameOfReferenceUID == s.FrameOfReferenceUID and ds.StudyInstanceUID == s.StudyInstanceUID
        assert list(ds.ImagePositionPatient) == list(s.ImagePositionPatient)
        assert list(ds.PixelSpacing) == list(s.PixelSpacing)
        assert ds.SeriesInstanceUID != s.SeriesInstanceUID
    assert np.ptp(np.stack([d.pixel_array for d in written])) > 0
