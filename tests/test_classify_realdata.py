"""Every real scanner file in ../shared/realdata classified without error, through the
same reader the service uses; out-of-scope series are `unknown`."""

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from dicom_synth.classify import classify_series
from dicom_synth.classify.cli import run
from tests.conftest import MISSING_COLLECTIONS
from tests.conftest import REALDATA as REAL

# Series description (or file) -> expected label. Nothing here is breast or brain T1/T2/
# T1c/FLAIR: fMRI, scouts, DTI, MIPs, maps, shoulder, a blank phantom MPRAGE, and CTs.
EXPECTED = {
    "REST1 w SMS PF7-8": "unknown",  # fMRI
    "ax_asc_35sl": "unknown",  # EPI
    "anat-scout_ses-01_MPR_cor": "unknown",  # scout reformat
    "AAHead_Scout": "unknown",
    "dMRI_mb3_AP_1.5": "unknown",  # brain DWI, b 5 and 1500
    "RESTING_STATE_Yerkes": "unknown",
    "MPRAGE_S2": "unknown",  # pixels all zero in this test file
    "CBU_DTI_64D_1A": "unknown",  # brain DTI, b 0 and 1000
    "<MIP Range>": "unknown",
    "marked lesion<MPR Collection>": "unknown",  # abdominal MPR
    "5/5mm Plain": "ct_head_neck",  # no body part: the skull in the pixels says head
    "Pancreas": "ct_abdomen_pelvis",
}


@pytest.fixture(scope="module")
def results() -> list[dict]:
    out = io.StringIO()
    assert run([str(REAL)], out=out) == 0
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_every_series_classified(results):
    assert len(results) >= 16 - len(MISSING_COLLECTIONS)  # dcm_qa_enh holds one series
    for r in results:
        assert set(r) == {"series_instance_uid", "series_description", "label", "confidence", "evidence", "route"}
        assert "classification failed" not in r["evidence"]["reason"], r
        assert 0.0 <= r["confidence"] <= 1.0


def test_expected_labels(results):
    by_description = {r["series_description"]: r for r in results}
    for description, label in EXPECTED.items():
        if description == "REST1 w SMS PF7-8" and "dcm_qa_enh" in MISSING_COLLECTIONS:
            continue
        assert by_description[description]["label"] == label, by_description[description]
    for r in results:
        if r["label"] == "unknown":
            assert r["route"] is None
    # The remaining unnamed ones: a shoulder, an enhanced CT perfusion map, a 64x64 test MR
    others = [r for r in results if r["series_description"] not in EXPECTED]
    assert sum(r["label"] == "unknown" for r in others) >= len(others) - 1


def test_files_the_reader_skips_are_classified_directly():
    """decimal_rescale.dcm has no SeriesInstanceUID, so no series reader takes it; the
    classifier itself still answers (a qT1 map: unknown)."""
    ds = pydicom.dcmread(REAL / "nibabel/decimal_rescale.dcm")
    volume = ds.pixel_array[None].astype("float32") * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    result = classify_series([ds], volume)
    assert result.label == "unknown" and "derived_map_or_projection" in result.evidence["rules"]


def test_diffusion_series_bvalues(results):
    by_description = {r["series_description"]: r for r in results}
    assert by_description["dMRI_mb3_AP_1.5"]["evidence"]["facts"]["BValues"] == [5.0, 1500.0]
    assert by_description["CBU_DTI_64D_1A"]["evidence"]["facts"]["BValues"] == [0.0, 1000.0]


def test_cli_any_names_nested_mixed(tmp_path: Path):
    """Files without .dcm, nested folders, three series mixed in one folder, junk beside."""
    (tmp_path / "a" / "b").mkdir(parents=True)
    shutil.copy(REAL / "nibabel/siemens_dwi_1000.dcm", tmp_path / "a" / "IMG0001")
    shutil.copy(REAL / "pydicom_data/explicit_VR-UN.dcm", tmp_path / "a" / "b" / "x")
    shutil.copy(REAL / "heudiconv/phantom.dcm", tmp_path / "a" / "b" / "y.bin")
    (tmp_path / "a" / "README.txt").write_text("not dicom")
    proc = subprocess.run([sys.executable, "-m", "dicom_synth.classify.cli", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(x) for x in proc.stdout.splitlines()]
    assert sorted(r["series_description"] for r in lines) == ["AAHead_Scout", "CBU_DTI_64D_1A", "Pancreas"]
    dwi = next(r for r in lines if r["series_description"] == "CBU_DTI_64D_1A")
    assert dwi["evidence"]["facts"]["BValues"] == [1000.0]


def test_cli_missing_path_and_empty_folder(tmp_path: Path):
    err = io.StringIO()
    assert run([str(tmp_path / "nope")], out=err) == 2
    assert run([str(tmp_path)], out=err) == 1
    assert err.getvalue() == ""


def _real_results_by_key() -> dict[str, object]:
    """Every real series through the service's reader and classifier, keyed as in the
    radiologist's table (models.classifier.realdata_labels.REAL_SERIES)."""
    from dicom_synth.series import group_series, load_series
    from models.classifier.realdata_labels import key_of

    out = {}
    for group in group_series([REAL]):
        key = key_of(REAL, group.files)
        assert key is not None, f"{group.files[0]} is not in the radiologist's table"
        try:
            loaded = load_series(group.files, pixels=True)
            out[key] = classify_series(loaded.slices, loaded.volume)
        except ValueError:  # the reader refuses it (no pixel data): headers alone
            loaded = load_series(group.files, pixels=False)
            out[key] = classify_series(loaded.slices, None)
    return out


def test_every_real_series_gets_the_radiologists_label():
    """The label a radiologist gives each real series from its headers and pixels (the
    table, with the reason for each, is models/classifier/realdata_labels.py)."""
    from models.classifier.realdata_labels import REAL_SERIES

    results = _real_results_by_key()
    wrong = {k: (c.label, REAL_SERIES[k][0], c.evidence.get("reason")) for k, c in results.items()
             if c.label != REAL_SERIES[k][0]}
    assert not wrong, wrong
    # the table covers the folder: no series unclassified, none named that is not there
    assert set(results) <= set(REAL_SERIES) and len(results) >= 15, sorted(results)


def test_no_real_series_is_vetoed_by_pixels_outside_their_domain():
    """Where the pixel image lies outside the classifier's training domain, the pixel
    verdict is recorded but never decides: the label is the headers' own."""
    results = _real_results_by_key()
    ignored = 0
    for key, c in results.items():
        domain = c.evidence.get("pixel_domain")
        if domain is None or domain.get("in_domain", True):
            continue
        ignored += 1
        assert c.evidence["pixel_model_used"] is False, (key, c.evidence)
        assert "pixels say" not in c.evidence["reason"] and "pixels show" not in c.evidence["reason"], (key, c)
        assert c.label == max(c.evidence["header_probabilities"], key=c.evidence["header_probabilities"].get) \
            or c.label == "unknown", (key, c)
    assert ignored >= 8  # most real series: other resolutions, orientations and matrices
