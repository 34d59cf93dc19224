"""The loop guard, a task's fit and source_contrast (issue 13, items 2 and 4), on real
scanner files and phantom series, through `pipeline.decide` as the worker and the CLI
call it."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from dicom_synth.classify import Classification
from dicom_synth.classify.evidence import evidence_summary
from dicom_synth.derived import MANUFACTURER
from dicom_synth.pipeline import decide
from dicom_synth.series import group_series, load_series
from dicom_synth.taskfit import (
    SourceContrastError,
    check_source_contrast,
    hounsfield_reason,
    model_source_label,
    synthetic_reason,
)
from models.brain.phantom_dicom import write_brain_series
from models.ct.phantom_dicom import write_ct_series

EXE = Path(sys.executable).with_name("dicom-synth")
REAL_CTS = ("pydicom_data/693_UNCR.dcm", "pydicom_data/bad_sequence.dcm", "pydicom_data/eCT_Supplemental.dcm",
            "pydicom_data/explicit_VR-UN.dcm")
REAL_MRS = ("pydicom_data/MR2_UNCR.dcm", "pydicom_data/emri_small.dcm",
            "pydicom_data/MR-SIEMENS-DICOM-WithOverlays.dcm", "nibabel/philips_mprage.dcm", "heudiconv/phantom.dcm")
CONTRAST_CLUES = ("SeriesDescription", "ProtocolName", "SequenceName", "StudyDescription", "RepetitionTime",
                  "EchoTime", "InversionTime", "FlipAngle", "ScanningSequence", "SequenceVariant", "ScanOptions",
                  "EchoTrainLength", "ContrastBolusAgent", "ContrastBolusRoute", "ContrastBolusVolume")


def _load(path: Path):
    (group,) = group_series([path])
    return load_series(group.files, pixels=True)


def _without_contrast_clues(files: list[Path]) -> list[Path]:
    for f in files:
        ds = dcmread(f)
        for kw in CONTRAST_CLUES:
            if kw in ds:
                delattr(ds, kw)
        ds.save_as(f)
    return files


# --------------------------------------------------------------------------- loop guard


def test_a_series_marked_synthetic_in_any_of_three_ways_is_refused_first(tmp_path):
    files = write_brain_series(tmp_path / "t1", seed=980, n_slices=3, size=64, contrast="t1")
    loaded = load_series(files)
    assert synthetic_reason(loaded.slices) is None
    assert decide(loaded).task == "brain_contrasts"

    ours = Dataset()
    ours.Manufacturer = MANUFACTURER
    someone_elses = Dataset()
    someone_elses.Manufacturer = "Other AI Inc"
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "109100", "DCM", "Synthesizing Equipment"
    someone_elses.PurposeOfReferenceCodeSequence = DicomSequence([code])
    marks = {
        "SyntheticData": lambda ds: setattr(ds, "SyntheticData", "YES"),
        MANUFACTURER: lambda ds: setattr(ds, "ContributingEquipmentSequence", DicomSequence([ours])),
        "109100": lambda ds: setattr(ds, "ContributingEquipmentSequence", DicomSequence([someone_elses])),
    }
    for word, mark in marks.items():
        slices = [copy.deepcopy(ds) for ds in loaded.slices]
        mark(slices[-1])  # one instance is enough
        marked = type(loaded)(slices, loaded.files, loaded.frame_numbers, loaded.volume)
        for task in ("auto", "brain_contrasts"):
            d = decide(marked, task)
            assert d.task is None and d.classification is None, (word, task)
            assert word in d.reason and "never synthesized from" in d.reason
            assert d.refused is (task != "auto")  # a forced task is the client's error (422)


# --------------------------------------------------------------------------- pseudo_mri


@pytest.mark.parametrize("name", REAL_CTS)
def test_real_cts_are_hounsfield(realdata, name):
    loaded = _load(realdata / name)
    assert hounsfield_reason(loaded.volume) is None
    assert decide(loaded, "pseudo_mri").task == "pseudo_mri"


@pytest.mark.parametrize("name", REAL_MRS)
def test_pseudo_mri_refuses_real_mr(realdata, name):
    loaded = _load(realdata / name)
    d = decide(loaded, "pseudo_mri")
    assert d.task is None and d.refused
    assert "needs a CT in Hounsfield units" in d.reason and "not CT" in d.reason
    assert hounsfield_reason(loaded.volume) is not None  # MR values are no Hounsfield units either


def test_pseudo_mri_refuses_mr_pixels_labelled_ct_and_a_wrong_rescale_type(tmp_path):
    flair = write_brain_series(tmp_path / "flair", seed=981, n_slices=3, size=64, contrast="flair")
    for f in flair:  # a FLAIR's values in a CT's clothes
        ds = dcmread(f)
        ds.Modality, ds.SOPClassUID = "CT", "1.2.840.10008.5.1.4.1.1.2"
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.save_as(f)
    d = decide(load_series(flair), "pseudo_mri")
    assert d.task is None and "no air near -1000 HU" in d.reason
    ct = write_ct_series(tmp_path / "ct", seed=982, n_slices=3, size=64, region="head_neck")
    assert decide(load_series(ct), "pseudo_mri").task == "pseudo_mri"
    assert decide(load_series(ct), "auto").task == "pseudo_mri"
    for f in ct:
        ds = dcmread(f)
        ds.RescaleType = "US"
        ds.save_as(f)
    d = decide(load_series(ct), "auto")  # routed by class, still checked
    assert d.task is None and "RescaleType US is not HU" in d.reason and not d.refused


def test_hounsfield_ignores_padding_outside_the_scan_field():
    rng = np.random.default_rng(0)
    volume = np.full((2, 64, 64), -3024.0, np.float32)
    volume[:, 8:56, 8:56] = -1000.0
    volume[:, 16:48, 16:48] = rng.normal(40, 20, (2, 32, 32))
    assert hounsfield_reason(volume) is None
    assert "no air" in hounsfield_reason(volume + 1024.0)  # stored values, rescale forgotten


# --------------------------------------------------------------------------- dce_phase1


@pytest.mark.parametrize("name", ("pydicom_data/MR2_UNCR.dcm", "pydicom_data/emri_small.dcm",
                                  "nibabel/philips_mprage.dcm", "pydicom_data/693_UNCR.dcm"))
def test_dce_phase1_refuses_real_non_breast_series(realdata, name):
    d = decide(_load(realdata / name), "dce_phase1")
    assert d.task is None and d.refused and "needs a breast MR non-contrast T1" in d.reason


def test_dce_phase1_refuses_a_brain_and_takes_a_breast_t1(tmp_path):
    from models.dce.phantom_dicom import write_phantom_series

    brain = write_brain_series(tmp_path / "b", seed=983, n_slices=3, size=64, contrast="t1")
    d = decide(load_series(brain), "dce_phase1")
    assert d.task is None and d.refused and "class 'brain_" in d.reason
    breast = write_phantom_series(tmp_path / "t1", seed=984, n_slices=3, size=128)
    assert decide(load_series(breast), "dce_phase1").task == "dce_phase1"


# --------------------------------------------------------------------------- brain_contrasts


def test_brain_contrasts_refuses_ct_and_non_brain_mr(realdata, tmp_path):
    ct = write_ct_series(tmp_path / "ct", seed=985, n_slices=3, size=64, region="head_neck")
    for loaded, words in ((load_series(ct), "the series is CT"),
                          (_load(realdata / "pydicom_data/693_UNCR.dcm"), "the series is CT"),
                          (_load(realdata / "pydicom_data/MR-SIEMENS-DICOM-WithOverlays.dcm"), "ABDOMEN"),
                          (_load(realdata / "pydicom_data/MR2_UNCR.dcm"), "shoulder")):
        for contrast in (None, "t1"):  # naming the contrast does not make it a brain
            d = decide(loaded, "brain_contrasts", contrast)
            assert d.task is None and d.refused and "needs a brain MR" in d.reason and words in d.reason


def test_source_contrast_names_a_brain_series_the_classifier_cannot(realdata):
    loaded = _load(realdata / "pydicom_data/emri_small.dcm")  # a real head MR the classifier leaves unknown
    d = decide(loaded, "brain_contrasts")
    assert d.classification.label == "unknown"
    assert d.task is None and d.refused and "pass source_contrast (t1, t2, t1c, flair)" in d.reason
    for task in ("brain_contrasts", "auto"):  # source_contrast implies brain_contrasts
        d = decide(loaded, task, "t1")
        assert d.task == "brain_contrasts" and d.source_label == "brain_t1"
    d = decide(_load(realdata / "heudiconv/b0dwiForFmap"), "brain_contrasts", "t2")
    assert d.task is None and "diffusion-weighted" in d.reason


def test_source_contrast_overrides_the_classifier_on_a_clueless_brain_phantom(tmp_path):
    files = _without_contrast_clues(
        write_brain_series(tmp_path / "t1", seed=986, n_slices=3, size=64, contrast="flair"))
    d = decide(load_series(files), "brain_contrasts", "t1")
    assert d.task == "brain_contrasts" and d.source_label == "brain_t1"


def test_source_contrast_values():
    assert check_source_contrast(None) is None and check_source_contrast("") is None
    assert check_source_contrast("T1c") == "t1c"
    with pytest.raises(SourceContrastError, match="valid: t1, t2, t1c, flair"):
        check_source_contrast("pd")
    with pytest.raises(SourceContrastError, match="brain_contrasts only"):
        check_source_contrast("t1", "dce_phase1")
    assert model_source_label("flair", "brain_t1") == "brain_flair"
    assert model_source_label(None, "brain_t1") == "brain_t1"


# --------------------------------------------------------------------------- evidence


def test_a_skipped_series_names_both_experts(realdata):
    d = decide(_load(realdata / "pydicom_data/emri_small.dcm"))
    assert d.task is None and not d.refused
    assert d.reason.startswith("no synthesis route for series class 'unknown' (confidence ")
    assert "headers say " in d.reason and "pixels say " in d.reason
    c = Classification("unknown", 1.0, {"reason": "r", "header_probabilities": {"brain_t1": 0.82, "unknown": 0.18},
                                        "pixel_probabilities": {"breast_dce_early": 1.0}})
    assert evidence_summary(c) == (
        "class 'unknown' (confidence 1.00; r): headers say brain_t1 (0.82), pixels say breast_dce_early (1.00)")
    assert "no pixel verdict" in evidence_summary(Classification("unknown", 1.0, {"header_probabilities": {}}))


# --------------------------------------------------------------------------- CLI


def test_cli_refuses_a_misfit_task_and_takes_source_contrast(tmp_path, realdata):
    def run(*args):
        r = subprocess.run([str(EXE), "synthesize", *args, "--out", str(tmp_path / "out")],
                           capture_output=True, text=True, timeout=300)
        return r, [json.loads(line) for line in r.stdout.splitlines()]

    r, (rec,) = run(str(realdata / "pydicom_data/emri_small.dcm"), "--task", "pseudo_mri")
    assert r.returncode == 1 and rec["status"] == "refused" and "needs a CT in Hounsfield units" in r.stderr
    r, _ = run(str(realdata / "pydicom_data/emri_small.dcm"), "--source-contrast", "pd")
    assert r.returncode == 2 and "valid: t1, t2, t1c, flair" in r.stderr
    files = _without_contrast_clues(
        write_brain_series(tmp_path / "t1", seed=987, n_slices=2, size=128, contrast="t1"))  # in its domain
    r, (rec,) = run(str(files[0].parent), "--task", "brain_contrasts", "--source-contrast", "t1")
    assert r.returncode == 0, r.stderr
    assert rec["status"] == "done" and len(rec["output_series_uids"]) == 3
    names = {dcmread(f).SeriesDescription for f in Path(rec["out_dir"]).rglob("*.dcm")}
    assert not any(n.endswith(" T1") for n in names) and any("FLAIR" in n for n in names), names
