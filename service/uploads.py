"""Validate an HTTP upload (files or one zip) and store it as one series.

Everything is checked before anything is stored: a rejected upload leaves no trace
in the series store, and the error says which file and why.
"""

from __future__ import annotations

import shutil
import tempfile
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO

from dicom_synth.series import read_whole
from dicom_synth.supported import (
    SOP_CLASSES,
    TRANSFER_SYNTAXES,
    sop_class_name,
    transfer_syntax_name,
)

MAX_ZIP_ENTRY_BYTES = 2 * 1024**3  # one DICOM file; guards against zip bombs
MAX_ZIP_TOTAL_BYTES = 16 * 1024**3


class UploadError(Exception):
    """A rejected upload: HTTP status and a reason a person can act on."""

    def __init__(self, status_code: int, reason: str) -> None:
        super().__init__(reason)
        self.status_code = status_code
        self.reason = reason


@dataclass
class StagedSeries:
    study_instance_uid: str
    series_instance_uid: str
    files: list[Path]  # staged copies, to be moved into the series store


def _copy_stream(src: BinaryIO | IO[bytes], dest: Path) -> int:
    with open(dest, "wb") as out:
        shutil.copyfileobj(src, out, length=1024 * 1024)
    return dest.stat().st_size


def stage_upload(uploads: Iterable[tuple[str, BinaryIO]], staging: Path) -> StagedSeries:
    """Write the uploaded files to `staging` and check they are one supported series."""
    staging.mkdir(parents=True, exist_ok=True)
    raw: list[tuple[str, Path]] = []
    for i, (name, stream) in enumerate(uploads):
        dest = staging / f"upload-{i:05d}"
        if _copy_stream(stream, dest) == 0:
            continue
        raw.append((name or dest.name, dest))
    if not raw:
        raise UploadError(400, "empty upload: no files, or only empty files")
    if len(raw) == 1 and zipfile.is_zipfile(raw[0][1]):
        raw = _extract_zip(raw[0][1], staging)
        if not raw:
            raise UploadError(400, "the zip holds no files")

    not_dicom: list[str] = []
    broken: list[str] = []
    bad_class: list[str] = []
    bad_syntax: list[str] = []
    series: dict[str, str] = {}
    for name, path in raw:
        ds, problem = read_whole(path)
        if ds is None:
            not_dicom.append(name)
            continue
        sop = str(ds.get("SOPClassUID", ""))
        if sop not in SOP_CLASSES:
            bad_class.append(f"{name} ({sop_class_name(sop) if sop else 'no SOP class'})")
        ts = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "1.2.840.10008.1.2")
        if ts not in TRANSFER_SYNTAXES:
            bad_syntax.append(f"{name} ({transfer_syntax_name(ts)})")
        if problem and sop in SOP_CLASSES:
            broken.append(f"{name} ({problem})")
        elif not problem and not _has_preamble(path):
            _rewrite_as_part10(ds, path)
        series.setdefault(str(ds.SeriesInstanceUID), str(ds.get("StudyInstanceUID", "")))
    if not_dicom:
        raise UploadError(422, f"not DICOM: {_names(not_dicom)}")
    if bad_class:
        raise UploadError(
            415, f"unsupported SOP class: {_names(bad_class)}; accepted: {', '.join(SOP_CLASSES.values())}"
        )
    if bad_syntax:
        raise UploadError(415, f"unsupported transfer syntax: {_names(bad_syntax)}")
    if broken:
        raise UploadError(422, f"damaged DICOM: {_names(broken)}")
    if len(series) > 1:
        raise UploadError(
            422, f"upload holds {len(series)} series ({_names(sorted(series))}); post one series per request"
        )
    (series_uid, study_uid), = series.items()
    if not study_uid:
        raise UploadError(422, "no StudyInstanceUID: the result could not be placed in a study")
    return StagedSeries(study_uid, series_uid, [p for _, p in raw])


def _has_preamble(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(128)
        return f.read(4) == b"DICM"


def _rewrite_as_part10(ds, path: Path) -> None:
    """Some exports write bare datasets without the Part 10 header; store them as files."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None) or FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if "TransferSyntaxUID" not in meta:
        meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds.file_meta = meta
    ds.save_as(path, enforce_file_format=True)


def _names(items: list[str], limit: int = 5) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _extract_zip(archive: Path, staging: Path) -> list[tuple[str, Path]]:
    out: list[tuple[str, Path]] = []
    total = 0
    try:
        with zipfile.ZipFile(archive) as zf:
            for i, info in enumerate(zf.infolist()):
                if info.is_dir() or info.filename.startswith("__MACOSX/"):
                    continue
                if Path(info.filename).name.startswith("."):
                    continue
                total += info.file_size
                if info.file_size > MAX_ZIP_ENTRY_BYTES or total > MAX_ZIP_TOTAL_BYTES:
                    raise UploadError(413, f"zip entry {info.filename} makes the upload too large")
                dest = staging / f"zip-{i:05d}"
                with zf.open(info) as src:
                    _copy_stream(src, dest)
                out.append((info.filename, dest))
    except zipfile.BadZipFile as exc:
        raise UploadError(422, f"corrupt zip: {exc}") from exc
    archive.unlink()
    return out


def new_staging_dir(data_dir: Path) -> Path:
    root = data_dir / "incoming"
    root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="upload-", dir=root))
