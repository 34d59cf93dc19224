"""Upload validation on real files: what is accepted, what is refused and why."""

import io
import shutil
import zipfile
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from service.uploads import UploadError, stage_upload
from tests.conftest import MISSING_COLLECTIONS, REALDATA


def _open(*paths):
    return [(Path(p).name, open(p, "rb")) for p in paths]


def test_one_series_is_staged(tmp_path):
    files = sorted((REALDATA / "heudiconv" / "b0dwiForFmap").iterdir())
    staged = stage_upload(_open(*files), tmp_path / "s")
    assert len(staged.files) == 3
    assert staged.series_instance_uid and staged.study_instance_uid


@pytest.mark.skipif("dcm_qa_enh" in MISSING_COLLECTIONS, reason="dcm_qa_enh absent from this machine's realdata")
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


# --- bounded resources and malformed input (issue 15) -----------------------------------------

from dicom_synth.limits import Limits  # noqa: E402
from tests.test_store import make_mr  # noqa: E402


def _limits(**kw) -> Limits:
    return Limits(**{"max_upload_bytes": 1 << 30, "max_series_instances": 10_000,
                     "max_instance_pixels": 1 << 27, **kw})


def _series(tmp_path, n: int, size: int = 32) -> list[Path]:
    from pydicom.uid import generate_uid

    study, series = generate_uid(), generate_uid()
    (tmp_path / "src").mkdir(exist_ok=True)
    return [make_mr(tmp_path / "src" / f"{i}.dcm", study=study, series=series, n=i, size=size)
            for i in range(1, n + 1)]


def test_zip_of_zeros_stops_at_the_expanded_limit_while_streaming(tmp_path):
    """A 64 MiB entry of zeros deflates to ~64 KiB: refused from its declared size before
    anything is inflated. Declaring 1 KiB instead does not help it: no more than the
    declared (and the limited) bytes are ever inflated, and the lie is a 4xx."""
    import time

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        with zf.open("zeros.dcm", "w", force_zip64=False) as entry:
            for _ in range(64):
                entry.write(bytes(1 << 20))
    assert len(buf.getvalue()) < 1 << 20
    # the declared size lies (says 1 KiB): the streaming count must catch it
    lying = bytearray(buf.getvalue())
    cd = lying.rfind(b"PK\x01\x02")
    lying[cd + 24:cd + 28] = (1024).to_bytes(4, "little")
    for name, data in (("honest.zip", buf.getvalue()), ("lying.zip", bytes(lying))):
        t0 = time.monotonic()
        with pytest.raises(UploadError) as err:
            stage_upload([(name, io.BytesIO(data))], tmp_path / name, _limits(max_upload_bytes=8 << 20))
        if name == "honest.zip":
            assert err.value.status_code == 413 and "SYNTH_MAX_UPLOAD_BYTES" in err.value.reason
        else:
            assert err.value.status_code in (413, 422) and "zip" in err.value.reason
        assert time.monotonic() - t0 < 5
        staged = sum(p.stat().st_size for p in (tmp_path / name).rglob("*") if p.is_file())
        assert staged <= (8 << 20) + (2 << 20)  # never more than the limit plus one chunk


def test_zip_entry_count_is_refused_from_its_end_record(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i in range(50):
            zf.writestr(f"f{i}.dcm", b"x")
    with pytest.raises(UploadError) as err:
        stage_upload([("many.zip", io.BytesIO(buf.getvalue()))], tmp_path / "s", _limits(max_series_instances=20))
    assert err.value.status_code == 413 and "50 entries" in err.value.reason


def test_too_many_instances_refused_before_reading_them(tmp_path):
    files = _series(tmp_path, 6)
    with pytest.raises(UploadError) as err:
        stage_upload(_open(*files), tmp_path / "s", _limits(max_series_instances=5))
    assert err.value.status_code == 413 and "SYNTH_MAX_SERIES_INSTANCES=5" in err.value.reason


def test_too_many_pixels_refused_from_the_header(tmp_path):
    """The header claims 60000 x 60000 pixels; the pixel data is not even there to read."""
    import pydicom

    (src,) = _series(tmp_path, 1)
    ds = pydicom.dcmread(src)
    ds.Rows = ds.Columns = 60000
    ds.save_as(tmp_path / "huge.dcm")
    with pytest.raises(UploadError) as err:
        stage_upload(_open(tmp_path / "huge.dcm"), tmp_path / "s", _limits())
    assert err.value.status_code == 413 and "SYNTH_MAX_INSTANCE_PIXELS" in err.value.reason


def test_upload_past_the_byte_limit_is_413(tmp_path):
    files = _series(tmp_path, 3, size=64)
    with pytest.raises(UploadError) as err:
        stage_upload(_open(*files), tmp_path / "s", _limits(max_upload_bytes=2 * files[0].stat().st_size))
    assert err.value.status_code == 413


def test_truncated_and_bogus_syntax_files_are_4xx_not_exceptions(tmp_path):
    """The two inputs the probe got a 500 for: a file cut inside its header, and a
    transfer syntax UID in the file meta that is no transfer syntax."""
    (src,) = _series(tmp_path, 1)
    data = src.read_bytes()
    for cut in (140, 200, 300, 400):
        with pytest.raises(UploadError) as err:
            stage_upload([("cut.dcm", io.BytesIO(data[:cut]))], tmp_path / f"c{cut}", _limits())
        assert 400 <= err.value.status_code < 500
    ts = b"1.2.840.10008.1.2.1\x00"
    assert ts in data
    for bogus in (b"1.2.3.4.5.6.7.8.9.0\x00", b"9" * 20):
        bad = data.replace(ts, bogus, 1)
        with pytest.raises(UploadError) as err:
            stage_upload([("ts.dcm", io.BytesIO(bad))], tmp_path / f"t{bogus[:3].decode()}", _limits())
        assert err.value.status_code == 415 and "transfer syntax" in err.value.reason


def test_gateway_answers_413_before_reading_an_oversized_body(tmp_path):
    """The real app: a Content-Length past SYNTH_MAX_UPLOAD_BYTES is refused at once; a
    chunked body without one is cut off once it passes the limit. No staging is left."""
    from fastapi.testclient import TestClient

    from dicom_synth.settings import Settings, get_settings
    from service.gateway.main import create_app

    settings = Settings(data_dir=tmp_path / "data", broker_url="redis://127.0.0.1:1/0", auth="off",
                        max_upload_bytes=1 << 20)
    app = create_app()
    app.dependency_overrides[get_settings] = lambda: settings
    big = bytes(3 << 20)
    with TestClient(app) as client:
        r = client.post("/synthesize", files=[("files", ("big.dcm", big, "application/dicom"))])
        assert r.status_code == 413 and "SYNTH_MAX_UPLOAD_BYTES" in r.json()["detail"]

        def chunks():
            boundary = b"--xyz\r\n"
            yield boundary + b'Content-Disposition: form-data; name="files"; filename="a.dcm"\r\n\r\n'
            for _ in range(3):
                yield bytes(1 << 20)
            yield b"\r\n--xyz--\r\n"

        r = client.post("/synthesize", content=chunks(),
                        headers={"content-type": "multipart/form-data; boundary=xyz"})
        assert r.status_code == 413, r.text
    assert not [p for p in (tmp_path / "data" / "incoming").rglob("*") if p.is_file()]


def test_gateway_start_removes_stale_staging(tmp_path):
    from fastapi.testclient import TestClient

    from dicom_synth.settings import Settings, get_settings
    from service.gateway.main import create_app

    settings = Settings(data_dir=tmp_path / "data", broker_url="redis://127.0.0.1:1/0", auth="off")
    left = settings.data_dir / "incoming" / "upload-dead"
    left.mkdir(parents=True)
    (left / "upload-00000").write_bytes(bytes(1000))
    app = create_app()
    app.dependency_overrides[get_settings] = lambda: settings
    with TestClient(app):
        assert not left.exists()


def test_gateway_refuses_an_instance_past_the_series_limit_with_413(tmp_path):
    """The series already holds SYNTH_MAX_SERIES_INSTANCES instances in the store (sent
    earlier, by either door): one more over HTTP is 413 and nothing is added."""
    from fastapi.testclient import TestClient

    from dicom_synth.settings import Settings, get_settings
    from service.gateway.main import create_app
    from service.store import SeriesStore

    settings = Settings(data_dir=tmp_path / "data", broker_url="redis://127.0.0.1:1/0", auth="off",
                        max_series_instances=2)
    files = _series(tmp_path, 3)
    store = SeriesStore(settings.store_dir)
    for f in files[:2]:
        store.put(Path(shutil.copy(f, tmp_path / f"copy-{f.name}")))
    app = create_app()
    app.dependency_overrides[get_settings] = lambda: settings
    with TestClient(app) as client:
        r = client.post("/synthesize", files=[("files", ("3.dcm", files[2].read_bytes(), "application/dicom"))])
    assert r.status_code == 413 and "SYNTH_MAX_SERIES_INSTANCES=2" in r.json()["detail"]
    assert len(list(settings.store_dir.rglob("*.dcm"))) == 2
