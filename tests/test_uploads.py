"""Upload validation on real files: what is accepted, what is refused and why."""

import io
import zipfile
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from service.uploads import UploadError, stage_upload
from tests.conftest import REALDATA


def _open(*paths):
    return [(Path(p).name, open(p, "rb")) for p in paths]


def test_one_series_is_staged(tmp_path):
    files = sorted((REALDATA / "heudiconv" / "b0dwiForFmap").iterdir())
    staged = stage_upload(_open(*files), tmp_path / "s")
    assert len(staged.files) == 3
    assert staged.series_instance_uid and staged.study_instance_uid


def test_zip_of_one_series(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for f in sorted((REALDATA / "dcm_qa_enh" / "Siemens_XA10_REST1").iterdir()):
            zf.write(f, f"nested/dir/{f.name}")
        zf.writestr("__MACOSX/._junk", b"x")
    buf.seek(0)
    staged = stage_upload([("series.zip", buf)], tmp_path / "s")
    assert len(staged.files) == 4


def test_empty_upload(tmp_path):
    with pytest.raises(UploadError) as err:
        stage_upload([], tmp_path / "s")
    assert err.value.status_code == 400
    with pytest.raises(UploadError) as err:
        stage_upload([("empty.dcm", io.BytesIO(b""))], tmp_path / "s2")
    assert err.value.status_code == 400


def test_non_dicom_is_named(tmp_path):
    files = _open(REALDATA / "nibabel" / "siemens_dwi_0.dcm") + [("notes.txt", io.BytesIO(b"hello " * 50))]
    with pytest.raises(UploadError) as err:
        stage_upload(files, tmp_path / "s")
    assert err.value.status_code == 422 and "notes.txt" in err.value.reason


def test_more_than_one_series(tmp_path):
    files = _open(REALDATA / "nibabel" / "siemens_dwi_0.dcm", REALDATA / "pydicom_data" / "MR2_UNCR.dcm")
    with pytest.raises(UploadError) as err:
        stage_upload(files, tmp_path / "s")
    assert err.value.status_code == 422 and "2 series" in err.value.reason


def test_unsupported_sop_class(tmp_path):
    with pytest.raises(UploadError) as err:
        stage_upload(_open(get_testdata_file("rtplan.dcm", download=False)), tmp_path / "s")
    assert err.value.status_code == 415 and "RT Plan" in err.value.reason


def test_truncated_file_is_refused(tmp_path):
    src = (REALDATA / "pydicom_data" / "MR2_UNCR.dcm").read_bytes()
    with pytest.raises(UploadError) as err:
        stage_upload([("cut.dcm", io.BytesIO(src[: len(src) // 2]))], tmp_path / "s")
    assert err.value.status_code == 422 and "cut.dcm" in err.value.reason
