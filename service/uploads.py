"""Validate an HTTP upload (files or one zip) and store it as one series.

Everything is checked before anything is stored: a rejected upload leaves no trace
in the series store, and the error says which file and why. Every check reads headers
first: the upload size, a zip's entry count (from its end record, before its directory is
parsed) and expanded size (counted while extracting), the instances of the series and the
pixels of each instance are all bounded (`dicom_synth.limits`) before a pixel is read.
Malformed input of any kind is a 4xx with the reason, never an exception.
"""

from __future__ import annotations

import logging
import shutil
import struct
import tempfile
import time
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO

from dicom_synth.limits import Limits, OverLimit, check_instance_pixels
from dicom_synth.series import read_header, read_whole
from dicom_synth.settings import get_settings
from dicom_synth.supported import (
    SOP_CLASSES,
    TRANSFER_SYNTAXES,
    sop_class_name,
    transfer_syntax_name,
)

log = logging.getLogger(__name__)

_MAX_CENTRAL_ENTRY = 1024
"""Bytes a zip's central directory may hold per allowed entry (46 + name + extra + comment)."""
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError,
               ValueError, struct.error)
"""What a damaged, encrypted or exotic zip raises while it is read."""


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


def _copy_stream(src: BinaryIO | IO[bytes], dest: Path, limit: int, too_large: str) -> int:
    """Copy at most `limit` bytes; past it, 413 with `too_large` (the partial file stays
    in staging, which the caller removes)."""
    written = 0
    with open(dest, "wb") as out:
        while chunk := src.read(1 << 20):
            written += len(chunk)
            if written > limit:
                raise UploadError(413, too_large)
            out.write(chunk)
    return written


def stage_upload(uploads: Iterable[tuple[str, BinaryIO]], staging: Path,
                 limits: Limits | None = None) -> StagedSeries:
    """Write the uploaded files to `staging` and check they are one supported series."""
    limits = limits or Limits.from_settings(get_settings())
    staging.mkdir(parents=True, exist_ok=True)
    raw: list[tuple[str, Path]] = []
    total = 0
    for i, (name, stream) in enumerate(uploads):
        dest = staging / f"upload-{i:05d}"
        size = _copy_stream(stream, dest, limits.max_upload_bytes - total,
                            f"upload larger than SYNTH_MAX_UPLOAD_BYTES={limits.max_upload_bytes}")
        total += size
        if size == 0:
            continue
        raw.append((name or dest.name, dest))
    if not raw:
        raise UploadError(400, "empty upload: no files, or only empty files")
    if len(raw) == 1 and _is_zip(raw[0][1]):
        raw = _extract_zip(raw[0][1], staging, limits)
        if not raw:
            raise UploadError(400, "the zip holds no files")
    return check_staged(raw, limits)


def check_staged(raw: list[tuple[str, Path]], limits: Limits) -> StagedSeries:
    """Check that staged files (name, path) are one supported series within the limits;
    a refusal is an UploadError naming the files and why (an upload's, or a series a
    PACS sent us)."""
    if len(raw) > limits.max_series_instances:
        raise UploadError(413, f"upload holds {len(raw)} files, more than "
                               f"SYNTH_MAX_SERIES_INSTANCES={limits.max_series_instances}")

    not_dicom: list[str] = []
    broken: list[str] = []
    bad_class: list[str] = []
    bad_syntax: list[str] = []
    too_large: list[str] = []
    series: dict[str, str] = {}
    lists = {"not DICOM": not_dicom, "damaged": broken, "class": bad_class, "syntax": bad_syntax,
             "too large": too_large}
    for name, path in raw:
        kind, detail, uids = _inspect(path, limits)
        if kind:
            lists[kind].append(f"{name} ({detail})" if detail else name)
        else:
            series.setdefault(*uids)
    if not_dicom:
        raise UploadError(422, f"not DICOM: {_names(not_dicom)}")
    if bad_class:
        raise UploadError(
            415, f"unsupported SOP class: {_names(bad_class)}; accepted: {', '.join(SOP_CLASSES.values())}"
        )
    if bad_syntax:
        raise UploadError(415, f"unsupported transfer syntax: {_names(bad_syntax)}")
    if too_large:
        raise UploadError(413, f"too large: {_names(too_large)}")
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


def _inspect(path: Path, limits: Limits) -> tuple[str, str, tuple[str, str]]:
    """(what is wrong, detail, ("", "")) or ("", "", (series UID, study UID)) for one file.

    The header is read first (no pixels) and every check it allows is made before the
    whole file is read. pydicom decodes values lazily, so a hostile value raises only when
    it is touched: any error reading it makes the file "damaged", never an exception."""
    none = ("", "")
    try:
        header = read_header(path)
    except Exception:
        header = None
    if header is None:
        return "not DICOM", "", none
    try:
        sop = str(header.get("SOPClassUID", "") or "")
        if sop not in SOP_CLASSES:
            return "class", sop_class_name(sop) if sop else "no SOP class", none
        meta = getattr(header, "file_meta", None)
        ts = str(meta.get("TransferSyntaxUID", "") if meta is not None else "") or "1.2.840.10008.1.2"
        if ts not in TRANSFER_SYNTAXES:
            return "syntax", transfer_syntax_name(ts), none
        check_instance_pixels(header, limits.max_instance_pixels)
        uids = tuple(str(header.get(k, "") or "").strip() for k in (
            "SeriesInstanceUID", "StudyInstanceUID", "SOPInstanceUID"))
    except OverLimit as exc:
        return "too large", str(exc), none
    except Exception as exc:
        return "damaged", f"unreadable header: {type(exc).__name__}: {exc}", none
    if not uids[0] or not uids[2]:
        return "damaged", "no SeriesInstanceUID" if not uids[0] else "no SOPInstanceUID", none
    problem = _whole_problem(path)
    if problem:
        return "damaged", problem, none
    return "", "", (uids[0], uids[1])


def _whole_problem(path: Path) -> str | None:
    """Read the whole file (the header passed): why it is not a whole image, or None.
    A bare data set without a Part 10 header is rewritten as a file."""
    try:
        ds, problem = read_whole(path)
        if ds is None:
            return "not DICOM"
        if not problem and not _has_preamble(path):
            _rewrite_as_part10(ds, path)
    except OSError:
        raise  # our disk (e.g. full): not the client's fault
    except Exception as exc:
        return f"unreadable: {type(exc).__name__}: {exc}"
    return problem


def _is_zip(path: Path) -> bool:
    """A zip file (local header first; a DICOM file whose last bytes look like a zip end
    record is still DICOM)."""
    with open(path, "rb") as f:
        if f.read(4) != b"PK\x03\x04":
            return False
    return zipfile.is_zipfile(path)


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


def _zip_directory(archive: Path) -> tuple[int, int]:
    """(entries, central directory bytes) as the zip's end record states them (zip64
    too), read before `zipfile` parses the directory into memory; (0, 0) when there is no
    end record (then `zipfile` refuses the file)."""
    with open(archive, "rb") as f:
        size = f.seek(0, 2)
        tail_start = max(0, size - (22 + 65535))
        f.seek(tail_start)
        tail = f.read()
        at = tail.rfind(b"PK\x05\x06")
        if at < 0 or len(tail) - at < 22:
            return 0, 0
        entries, directory = struct.unpack_from("<HI", tail, at + 10)
        locator = at - 20
        if (entries == 0xFFFF or directory == 0xFFFFFFFF) and locator >= 0 and (
                tail[locator:locator + 4] == b"PK\x06\x07"):
            (offset,) = struct.unpack_from("<Q", tail, locator + 8)
            f.seek(offset)
            record = f.read(56)
            if len(record) == 56 and record[:4] == b"PK\x06\x06":
                entries, directory = struct.unpack_from("<QQ", record, 32)
    return entries, directory


def _extract_zip(archive: Path, staging: Path, limits: Limits) -> list[tuple[str, Path]]:
    """The zip's files, extracted while counting: the entry count and the directory size
    are checked before the directory is read, the declared sizes before extracting, and
    the bytes actually inflated while extracting (a declared size can lie)."""
    entries, directory = _zip_directory(archive)
    most = limits.max_series_instances
    if entries > most or directory > most * _MAX_CENTRAL_ENTRY:
        raise UploadError(413, f"zip holds {entries} entries ({directory} bytes of directory), more than "
                               f"SYNTH_MAX_SERIES_INSTANCES={most}")
    budget = limits.max_upload_bytes
    too_large = f"zip expands past SYNTH_MAX_UPLOAD_BYTES={budget}"
    out: list[tuple[str, Path]] = []
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = [info for info in zf.infolist()
                     if not info.is_dir() and not info.filename.startswith("__MACOSX/")
                     and not Path(info.filename).name.startswith(".")]
            if len(zf.infolist()) > most:
                raise UploadError(413, f"zip holds {len(zf.infolist())} entries, more than "
                                       f"SYNTH_MAX_SERIES_INSTANCES={most}")
            if sum(info.file_size for info in infos) > budget:
                raise UploadError(413, too_large)
            for i, info in enumerate(infos):
                dest = staging / f"zip-{i:05d}"
                with zf.open(info) as src:
                    budget -= _copy_stream(src, dest, budget, too_large)
                out.append((info.filename, dest))
    except _ZIP_ERRORS as exc:
        raise UploadError(422, f"corrupt zip: {type(exc).__name__}: {exc}") from exc
    archive.unlink()
    return out


def staging_root(data_dir: Path) -> Path:
    return data_dir / "incoming"


def new_staging_dir(data_dir: Path) -> Path:
    root = staging_root(data_dir)
    root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="upload-", dir=root))


def clean_staging(data_dir: Path, older_than: float = 0.0) -> int:
    """Remove upload staging left by a gateway that died mid-upload (the gateway calls
    this as it starts: it is the only writer there); returns how many were removed."""
    root = staging_root(data_dir)
    if not root.is_dir():
        return 0
    cutoff = time.time() - older_than
    removed = 0
    for entry in root.iterdir():
        try:
            if entry.name.startswith("upload-") and entry.lstat().st_mtime <= cutoff:
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
                removed += 1
        except FileNotFoundError:
            continue
    if removed:
        log.info("removed %d stale upload staging directories from %s", removed, root)
    return removed
