"""The series store: durable, atomic, idempotent; refuses partial or unreadable files."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from service.store import InvalidInstance, SeriesStore, check_part10, is_valid_uid
from tests.conftest import REALDATA
from tests.peers import mounted_tmpfs

MR = "1.2.840.10008.5.1.4.1.1.4"


def make_mr(path: Path, *, study: str, series: str, sop: str | None = None, n: int = 1,
            size: int = 32) -> Path:
    """A small valid MR slice written as Part 10."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = MR
    sop = sop or generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.SOPClassUID, ds.SOPInstanceUID = MR, sop
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.Modality, ds.InstanceNumber = "MR", n
    ds.ImagePositionPatient, ds.ImageOrientationPatient = [0, 0, float(n)], [1, 0, 0, 0, 1, 0]
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.full((size, size), n, dtype=np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def store(tmp_path: Path) -> SeriesStore:
    return SeriesStore(tmp_path / "store")


def test_put_moves_file_into_uid_layout(store: SeriesStore, tmp_path: Path) -> None:
    study, series = generate_uid(), generate_uid()
    src = make_mr(tmp_path / "in.dcm", study=study, series=series)
    data = src.read_bytes()
    inst = store.put(src)
    assert inst.is_new
    assert inst.path == store.root / study / series / f"{inst.sop_instance_uid}.dcm"
    assert inst.path.read_bytes() == data
    assert not src.exists()
    assert store.series_files(study, series) == [inst.path]
    assert list(store.iter_series()) == [(study, series)]
    assert inst.header.SeriesInstanceUID == series and "PixelData" not in inst.header
    assert not any((store.root / ".incoming").iterdir())


def test_duplicate_is_idempotent_and_counted_once(store: SeriesStore, tmp_path: Path) -> None:
    study, series, sop = generate_uid(), generate_uid(), generate_uid()
    first = store.put(make_mr(tmp_path / "a.dcm", study=study, series=series, sop=sop, n=1))
    again = store.put(make_mr(tmp_path / "b.dcm", study=study, series=series, sop=sop, n=2))
    assert first.is_new and not again.is_new
    assert store.series_files(study, series) == [first.path]
    assert np.frombuffer(first.path.read_bytes()[-2:], np.uint16)[0] == 2  # replaced


def test_concurrent_duplicates_are_new_exactly_once(store: SeriesStore, tmp_path: Path) -> None:
    study, series, sop = generate_uid(), generate_uid(), generate_uid()
    srcs = [make_mr(tmp_path / f"{i}.dcm", study=study, series=series, sop=sop) for i in range(8)]
    results: list[bool] = []
    barrier = threading.Barrier(len(srcs))

    def put(p: Path) -> None:
        barrier.wait()
        results.append(store.put(p).is_new)

    threads = [threading.Thread(target=put, args=(p,)) for p in srcs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 7 + [True]
    assert len(store.series_files(study, series)) == 1


def test_copy_from_another_file_system(store: SeriesStore, tmp_path: Path) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(store.root).st_dev:
        pytest.skip("no second file system at /dev/shm to copy from")
    study, series = generate_uid(), generate_uid()
    src = make_mr(shm / f"store-test-{os.getpid()}.dcm", study=study, series=series)
    data = src.read_bytes()
    inst = store.put(src)
    assert inst.path.read_bytes() == data and not src.exists()
    assert not any((store.root / ".incoming").iterdir())


@pytest.mark.parametrize("cut", [1, 7, 100, 2000, 2100])
def test_truncated_file_refused_and_left_in_place(
        store: SeriesStore, tmp_path: Path, cut: int) -> None:
    study, series = generate_uid(), generate_uid()
    src = make_mr(tmp_path / "in.dcm", study=study, series=series)
    data = src.read_bytes()
    src.write_bytes(data[: len(data) - cut])
    with pytest.raises(InvalidInstance):
        store.put(src)
    assert src.exists()
    assert store.series_files(study, series) == []


@pytest.mark.parametrize("name", ["MR_small.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm",
                                  "image_dfl.dcm", "JPEG2000.dcm", "emri_small.dcm"])
def test_truncation_anywhere_is_caught(store: SeriesStore, tmp_path: Path, name: str) -> None:
    """Cuts every few bytes, element boundaries included, are all refused."""
    src = get_testdata_file(name, download=False) or REALDATA / "pydicom_data" / name
    data = Path(src).read_bytes()
    p = tmp_path / "cut.dcm"
    missed = []
    # This deflated file carries 8 bytes after the end of its deflate stream (a zlib-style
    # trailer); cutting those loses no data, so cuts start past them.
    first = 9 if name == "image_dfl.dcm" else 1
    for cut in range(first, len(data) - 132, max(13, len(data) // 300)):
        p.write_bytes(data[: len(data) - cut])
        try:
            store.put(p)
            missed.append(cut)
        except InvalidInstance:
            pass
    assert missed == []
    p.write_bytes(data)
    assert store.put(p).is_new  # and the whole file is fine


def test_invalid_uids_refused(store: SeriesStore, tmp_path: Path) -> None:
    src = make_mr(tmp_path / "in.dcm", study="../../etc", series=generate_uid())
    with pytest.raises(InvalidInstance, match="StudyInstanceUID"):
        store.put(src)
    assert [p.name for p in store.root.iterdir()] == [".incoming"]
    assert not is_valid_uid("1.2/3") and not is_valid_uid("") and is_valid_uid("1.2.3")
    with pytest.raises(ValueError):
        store.series_files("..", "1.2")


def test_sop_instance_uid_must_match_request(store: SeriesStore, tmp_path: Path) -> None:
    src = make_mr(tmp_path / "in.dcm", study=generate_uid(), series=generate_uid())
    with pytest.raises(InvalidInstance) as err:
        store.put(src, expected_sop_instance_uid="1.2.3")
    assert err.value.mismatch


def test_non_dicom_refused(store: SeriesStore, tmp_path: Path) -> None:
    p = tmp_path / "x.dcm"
    p.write_bytes(b"hello" * 100)
    with pytest.raises(InvalidInstance, match="DICM"):
        store.put(p)


@pytest.fixture
def tiny_fs(tmp_path: Path):
    """A 256 KiB tmpfs (needs root and mount rights, as on the CI machine)."""
    with mounted_tmpfs(tmp_path / "tiny", "256k") as mnt:
        yield mnt


def test_full_disk_raises_enospc_and_leaves_nothing(tiny_fs: Path, tmp_path: Path) -> None:
    store = SeriesStore(tiny_fs / "store")
    study, series = generate_uid(), generate_uid()
    stored, failed = [], 0
    for i in range(12):  # 12 x 128 KiB slices cannot fit in 256 KiB
        src = make_mr(tmp_path / f"{i}.dcm", study=study, series=series, n=i + 1, size=256)
        try:
            stored.append(store.put(src))
        except OSError as exc:
            assert exc.errno in (28, 122)  # ENOSPC, EDQUOT
            assert src.exists()  # the sender's copy is kept
            failed += 1
    assert failed >= 10 and stored
    files = store.series_files(study, series)
    assert files == sorted(s.path for s in stored)
    for f in files:
        check_part10(f)  # every visible file is whole
    assert not any((store.root / ".incoming").iterdir())


def test_series_files_ignores_markers_and_temp(store: SeriesStore, tmp_path: Path) -> None:
    study, series = generate_uid(), generate_uid()
    store.put(make_mr(tmp_path / "a.dcm", study=study, series=series))
    d = store.series_dir(study, series)
    (d / ".announced.json").write_text("{}")
    (d / "junk.tmp").write_text("x")
    assert len(store.series_files(study, series)) == 1
    shutil.rmtree(store.root / study)
    assert store.series_files(study, series) == []


# pydicom's own test files worth sending: MR/CT in several syntaxes, plus classes we refuse.
PYDICOM_FILES = [
    "MR_small.dcm", "MR_small_implicit.dcm", "MR_small_padded.dcm", "MR_small_RLE.dcm",
    "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_bigendian.dcm",
    "MR_truncated.dcm", "CT_small.dcm", "693_J2KI.dcm", "J2K_pixelrep_mismatch.dcm",
    "emri_small_jpeg_2k_lossless.dcm", "JPEG2000.dcm", "SC_rgb_jpeg_dcmtk.dcm", "image_dfl.dcm",
    "rtdose_rle.dcm", "UN_sequence.dcm", "examples_overlay.dcm",
]

def corpus() -> list[Path]:
    files = sorted(REALDATA.rglob("*.dcm"))
    for name in PYDICOM_FILES:
        p = get_testdata_file(name, download=False)
        if p is not None:
            files.append(Path(p))
    return files


@pytest.mark.parametrize("path", corpus(), ids=lambda p: p.name)
def test_header_values_agree_with_pydicom(path: Path) -> None:
    """The attributes `check_part10` decodes on its walk equal pydicom's reading."""
    from service.completion import slice_info
    from service.store import HEADER_ATTRIBUTES

    try:
        values = check_part10(path).values
    except InvalidInstance:
        pytest.skip("refused by the structure check")
    ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    for keyword, vr in HEADER_ATTRIBUTES.values():
        if keyword not in ds:
            assert keyword not in values
            continue
        theirs = ds[keyword].value
        if theirs in (None, "") or (vr in ("IS", "DS") and not str(theirs).strip()):
            assert values[keyword] is None, keyword
        elif vr in ("US", "IS"):
            want = [int(v) for v in theirs] if ds[keyword].VM > 1 else int(theirs)
            assert values[keyword] == want, keyword
        elif vr == "DS":
            want = [float(v) for v in theirs] if ds[keyword].VM > 1 else float(theirs)
            assert values[keyword] == pytest.approx(want), keyword
        else:
            want = [str(v) for v in theirs] if ds[keyword].VM > 1 else str(theirs).strip()
            assert values[keyword] == want, keyword
    assert slice_info(values) == slice_info(ds)
    for keyword in ("FloatPixelData", "DoubleFloatPixelData"):
        assert (keyword in values) == (keyword in pydicom.dcmread(path, force=True))
