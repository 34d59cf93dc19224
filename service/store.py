"""The series store: one durable file per instance at `root/<Study>/<Series>/<SOP>.dcm`.

A file becomes visible only whole: it is checked (complete Part 10 structure), fsynced,
then linked into place atomically and the directory fsynced. The listener and the HTTP
gateway both call `put()`, so a duplicate from either side is idempotent: the same
SOPInstanceUID replaces the stored copy atomically and is reported new only once.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import struct
import threading
import uuid
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from io import BytesIO
from pathlib import Path
from typing import Any, BinaryIO

import pydicom
from pydicom.dataset import Dataset

from dicom_synth.filemodes import FILE_MODE
from dicom_synth.limits import OverLimit, check_instance_pixels, series_instances_refusal
from dicom_synth.supported import sop_class_name as _class_name

_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_INCOMING = ".incoming"


class InvalidInstance(ValueError):
    """The file is not a whole, storable DICOM instance (data problem, not ours)."""

    def __init__(self, message: str, *, mismatch: bool = False) -> None:
        super().__init__(message)
        self.mismatch = mismatch
        """True when the data set contradicts what the sender said it is."""


def is_valid_uid(uid: str) -> bool:
    """A DICOM UID (digits and dots, at most 64 characters): safe as a path component."""
    return 0 < len(uid) <= 64 and bool(_UID_RE.match(uid))


@dataclass(frozen=True)
class StoredInstance:
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    path: Path
    is_new: bool
    values: Mapping[str, Any] = field(compare=False, repr=False)
    """The header attributes read while storing (`HEADER_ATTRIBUTES`, those present), by
    keyword: UIDs and code strings as str, US and IS as int, DS as float, several values
    as a list; an empty value is None."""

    @cached_property
    def header(self) -> Dataset:
        """The whole header without pixel data (read from the stored file when first used)."""
        return pydicom.dcmread(self.path, stop_before_pixels=True)


class SeriesStore:
    """Durable instance files grouped by study and series.

    With `max_instance_pixels` and `max_series_instances` set, `put` refuses (`OverLimit`)
    an instance whose header describes more pixels, or a new instance for a series that
    holds that many already; both are read from the header walk, before any pixel is.
    """

    def __init__(self, root: Path, *, max_instance_pixels: int | None = None,
                 max_series_instances: int | None = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.incoming_dir = self.root / _INCOMING
        """Scratch space on the store's file system (files here are never instances)."""
        self.incoming_dir.mkdir(exist_ok=True)
        self.max_instance_pixels = max_instance_pixels
        self.max_series_instances = max_series_instances
        self._counts: dict[tuple[str, str], int] = {}
        self._counts_lock = threading.Lock()

    def series_dir(self, study_uid: str, series_uid: str) -> Path:
        for uid in (study_uid, series_uid):
            if not is_valid_uid(uid):
                raise ValueError(f"not a valid UID: {uid!r}")
        return self.root / study_uid / series_uid

    def put(self, src_path: Path, *,
            expected_sop_instance_uid: str | None = None,
            expected_sop_class_uid: str | None = None) -> StoredInstance:
        """Move a fully written Part 10 file into the store; the source is gone afterwards.

        Raises `InvalidInstance` for unreadable or truncated data (the file is left where
        it was), `OverLimit` past the store's limits, and `OSError` when the store cannot
        write (e.g. ENOSPC); in no case is anything half-written visible in the store.
        `expected_sop_instance_uid` and `expected_sop_class_uid` (the C-STORE request's
        affected SOP instance and the presentation context's abstract syntax) must match
        the data set when given.
        """
        src = Path(src_path)
        info = check_part10(src)
        values = info.values
        if self.max_instance_pixels is not None:
            check_instance_pixels(values, self.max_instance_pixels)
        _check_pixel_data(values, info)
        study, series, sop = (str(values.get(k) or "").strip() for k in (
            "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"))
        for name, uid in (("StudyInstanceUID", study), ("SeriesInstanceUID", series),
                          ("SOPInstanceUID", sop)):
            if not is_valid_uid(uid):
                raise InvalidInstance(f"{name} missing or not a valid UID: {uid!r}")
        if expected_sop_instance_uid is not None and expected_sop_instance_uid.strip() != sop:
            raise InvalidInstance(
                f"SOPInstanceUID {sop} differs from the request's {expected_sop_instance_uid}",
                mismatch=True,
            )
        if expected_sop_class_uid is not None:
            sop_class = str(values.get("SOPClassUID") or "")
            if sop_class != expected_sop_class_uid.strip():
                raise InvalidInstance(
                    f"data set is {_class_name(sop_class) if sop_class else 'no SOP class'}, "
                    f"not {_class_name(expected_sop_class_uid)}",
                    mismatch=True,
                )

        series_dir = self._make_dirs(study, series)
        final = series_dir / f"{sop}.dcm"
        self._admit(study, series, final)
        staged, copied = self._stage(src)
        try:
            is_new = _link_or_replace(staged, final)
        except BaseException:
            if copied:
                _unlink_quietly(staged)
            raise
        _unlink_quietly(staged)  # after a link (not a replace) the old name is still there
        _fsync_dir(series_dir)
        if copied:
            _unlink_quietly(src)
        return StoredInstance(study, series, sop, final, is_new, values)

    def _admit(self, study: str, series: str, final: Path) -> None:
        """Refuse a new instance for a series at `max_series_instances` (a replacement of
        a stored instance is always taken). Counts are kept in memory and recounted from
        the directory before a refusal, so instances other processes stored are seen."""
        limit = self.max_series_instances
        if limit is None or final.exists():
            return
        key = (study, series)
        with self._counts_lock:
            count = self._counts.get(key)
            if count is None or count >= limit:
                count = sum(1 for p in final.parent.iterdir() if p.suffix == ".dcm")
            if count >= limit:
                self._counts[key] = count
                raise OverLimit(series_instances_refusal(count, limit))
            self._counts[key] = count + 1

    def series_files(self, study_uid: str, series_uid: str) -> list[Path]:
        """The stored instance files of a series, sorted by name (not slice order)."""
        d = self.series_dir(study_uid, series_uid)
        if not d.is_dir():
            return []
        return sorted(p for p in d.iterdir() if p.suffix == ".dcm" and is_valid_uid(p.stem))

    def iter_series(self) -> Iterator[tuple[str, str]]:
        """Every (study UID, series UID) that has a directory in the store."""
        for study in sorted(self.root.iterdir()):
            if not study.is_dir() or not is_valid_uid(study.name):
                continue
            for series in sorted(study.iterdir()):
                if series.is_dir() and is_valid_uid(series.name):
                    yield study.name, series.name

    def _make_dirs(self, study: str, series: str) -> Path:
        """Create the series directory; fsync each parent whose entries changed."""
        study_dir = self.root / study
        series_dir = study_dir / series
        if series_dir.is_dir():
            return series_dir
        for parent, child in ((self.root, study_dir), (study_dir, series_dir)):
            try:
                child.mkdir()
            except FileExistsError:
                continue
            _fsync_dir(parent)
        return series_dir

    def _stage(self, src: Path) -> tuple[Path, bool]:
        """A durable file holding `src` on the store's file system, and whether it is a copy.

        On the same file system `src` itself is fsynced and used (no copy); elsewhere it
        is copied into `root/.incoming` and fsynced there.
        """
        incoming = self.root / _INCOMING
        if os.stat(src).st_dev == os.stat(incoming).st_dev:
            fd = os.open(src, os.O_RDONLY)
            try:
                os.fchmod(fd, FILE_MODE)
                os.fsync(fd)
            finally:
                os.close(fd)
            return src, False
        staged = incoming / f"{uuid.uuid4().hex}.part"
        try:
            with open(src, "rb") as fin, open(staged, "wb") as fout:
                shutil.copyfileobj(fin, fout, 1 << 20)
                fout.flush()
                os.fchmod(fout.fileno(), FILE_MODE)
                os.fsync(fout.fileno())
        except BaseException:
            _unlink_quietly(staged)
            raise
        return staged, True


def _check_pixel_data(values: Mapping[str, Any], info: Part10Info) -> None:
    """An image must carry its pixels, all of them (a file cut between elements parses)."""
    is_image = "Rows" in values or "Image Storage" in pydicom.uid.UID(
        str(values.get("SOPClassUID") or "")).name
    if not is_image or "FloatPixelData" in values or "DoubleFloatPixelData" in values:
        return
    if info.pixel_data_length is None:
        raise InvalidInstance("image has no PixelData (truncated?)")
    if info.pixel_data_length < 0:
        return  # encapsulated: the walker found its sequence delimiter
    try:
        bits = int(values["BitsAllocated"])
        n = int(values["Rows"]) * int(values["Columns"]) * int(values.get("SamplesPerPixel") or 1)
        n *= int(values.get("NumberOfFrames") or 1)
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidInstance(f"image pixel description unreadable: {exc!r}") from exc
    if str(values.get("PhotometricInterpretation") or "").endswith("_422"):
        n = n * 2 // 3  # chroma subsampled: 2 samples per pixel on the wire
    expected = (n * bits + 7) // 8
    if info.pixel_data_length < expected:
        raise InvalidInstance(
            f"PixelData holds {info.pixel_data_length} bytes, the header needs {expected}"
        )


def _link_or_replace(staged: Path, final: Path) -> bool:
    """Publish `staged` at `final` atomically; True when no copy existed before.

    `link` fails if the name exists, so of two concurrent puts of one SOP exactly one
    sees it new, even across processes; the other replaces it atomically.
    """
    try:
        os.link(staged, final)
        return True
    except FileExistsError:
        os.replace(staged, final)
        return False


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def is_out_of_space(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


# --- Part 10 structure check -------------------------------------------------------------
# pydicom reads truncated files without complaint, so walk the element structure ourselves:
# every element must end inside the file and the last one exactly at its end. Values are
# skipped by seeking, so this costs microseconds per element and never decodes pixels. The
# few top-level attributes the store and series completion need are decoded on the way
# (reading the header again with pydicom cost more than the rest of `put` together).

HEADER_ATTRIBUTES: dict[tuple[int, int], tuple[str, str]] = {
    (0x0008, 0x0016): ("SOPClassUID", "UI"),
    (0x0008, 0x0018): ("SOPInstanceUID", "UI"),
    (0x0020, 0x000D): ("StudyInstanceUID", "UI"),
    (0x0020, 0x000E): ("SeriesInstanceUID", "UI"),
    (0x0020, 0x0012): ("AcquisitionNumber", "IS"),
    (0x0020, 0x0013): ("InstanceNumber", "IS"),
    (0x0020, 0x0032): ("ImagePositionPatient", "DS"),
    (0x0020, 0x0037): ("ImageOrientationPatient", "DS"),
    (0x0020, 0x0105): ("NumberOfTemporalPositions", "IS"),
    (0x0020, 0x1002): ("ImagesInAcquisition", "IS"),
    (0x0028, 0x0002): ("SamplesPerPixel", "US"),
    (0x0028, 0x0004): ("PhotometricInterpretation", "CS"),
    (0x0028, 0x0008): ("NumberOfFrames", "IS"),
    (0x0028, 0x0010): ("Rows", "US"),
    (0x0028, 0x0011): ("Columns", "US"),
    (0x0028, 0x0100): ("BitsAllocated", "US"),
}
"""(group, element) -> (keyword, VR) of what `check_part10` decodes from the top level."""
_PRESENCE_ONLY = {(0x7FE0, 0x0008): "FloatPixelData", (0x7FE0, 0x0009): "DoubleFloatPixelData"}
_MAX_ATTRIBUTE = 1024
MAX_NESTING = 32
"""Sequences nested deeper are refused as data no modality writes (a nesting bomb would
otherwise exhaust the recursion of every parser after us)."""
MAX_INFLATED = 1 << 30
"""A deflated data set may expand to at most this many bytes (a deflate bomb)."""

_UNDEFINED = 0xFFFFFFFF
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_ITEM, _ITEM_END, _SEQ_END = (0xFFFE, 0xE000), (0xFFFE, 0xE00D), (0xFFFE, 0xE0DD)
_IMPLICIT_LE = "1.2.840.10008.1.2"
_EXPLICIT_BE = "1.2.840.10008.1.2.2"
_DEFLATED = ("1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.4.95")


@dataclass(frozen=True)
class Part10Info:
    transfer_syntax_uid: str
    pixel_data_length: int | None
    """Value length of top-level (7FE0,0010); None when absent, -1 when encapsulated."""
    values: dict[str, Any] = field(default_factory=dict)
    """The `HEADER_ATTRIBUTES` present, decoded (see `StoredInstance.values`)."""


def check_part10(path: Path) -> Part10Info:
    """Raise `InvalidInstance` unless `path` is a structurally whole Part 10 file."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(132)
            if len(head) < 132 or head[128:132] != b"DICM":
                raise InvalidInstance("not a DICOM Part 10 file (no DICM prefix)")
            ts = _read_meta(f, size)
            if ts in _DEFLATED:
                raw = f.read()
                z = zlib.decompressobj(-zlib.MAX_WBITS)
                try:
                    body = z.decompress(raw, MAX_INFLATED)
                except zlib.error as exc:
                    raise InvalidInstance(f"deflated data set is corrupt: {exc}") from exc
                if z.unconsumed_tail:
                    raise OverLimit(f"deflated data set expands past {MAX_INFLATED} bytes")
                if not z.eof:
                    raise InvalidInstance("deflated data set is truncated")
                walker = _Walker(BytesIO(body), len(body), explicit=True, little=True)
                walker.dataset(len(body))
            else:
                walker = _Walker(f, size, explicit=ts != _IMPLICIT_LE, little=ts != _EXPLICIT_BE)
                walker.dataset(size)
    except struct.error as exc:
        raise InvalidInstance(f"truncated element: {exc}") from exc
    return Part10Info(ts, walker.pixel_data_length, walker.values)


def _read_meta(f: BinaryIO, size: int) -> str:
    """Read the file meta group (explicit VR little endian); leave `f` after it."""
    ts = ""
    while True:
        pos = f.tell()
        peek = f.read(8)
        if len(peek) < 8:
            raise InvalidInstance("truncated file meta information")
        group, elem = struct.unpack("<HH", peek[:4])
        if group != 0x0002:
            f.seek(pos)
            break
        vr = peek[4:6]
        if vr in _LONG_VRS:
            (length,) = struct.unpack("<I", f.read(4))
        else:
            (length,) = struct.unpack("<H", peek[6:8])
        if length == _UNDEFINED or pos + length > size:
            raise InvalidInstance("malformed file meta information")
        value = f.read(length)
        if elem == 0x0010:
            ts = value.decode("ascii", "replace").strip("\0 ")
    if not ts:
        raise InvalidInstance("file meta has no TransferSyntaxUID")
    return ts


class _Walker:
    def __init__(self, f: BinaryIO, size: int, *, explicit: bool, little: bool) -> None:
        self.f, self.size, self.explicit = f, size, explicit
        self.e = "<" if little else ">"
        self.pixel_data_length: int | None = None
        self.values: dict[str, Any] = {}
        self._depth = 0

    def _tag(self) -> tuple[int, int, bytes]:
        raw = self.f.read(8)
        if len(raw) < 8:
            raise InvalidInstance("truncated: element header cut off")
        group, elem = struct.unpack(self.e + "HH", raw[:4])
        return group, elem, raw

    def dataset(self, end: int | None, *, explicit: bool | None = None) -> None:
        """Walk elements up to `end`, or up to an item delimiter when `end` is None."""
        explicit = self.explicit if explicit is None else explicit
        while end is None or self.f.tell() < end:
            group, elem, raw = self._tag()
            if (group, elem) == _ITEM_END:
                if end is None:
                    return
                raise InvalidInstance("unexpected item delimiter")
            if explicit and group != 0xFFFE:
                vr = raw[4:6]
                if not (vr.isalpha() and vr.isupper()):
                    raise InvalidInstance(f"invalid VR {vr!r} at ({group:04X},{elem:04X})")
                if vr in _LONG_VRS:
                    (length,) = struct.unpack(self.e + "I", self.f.read(4))
                else:
                    (length,) = struct.unpack(self.e + "H", raw[6:8])
            else:
                vr = None
                (length,) = struct.unpack(self.e + "I", raw[4:8])
            if self._depth == 0:
                if (group, elem) == (0x7FE0, 0x0010):
                    self.pixel_data_length = -1 if length == _UNDEFINED else length
                elif (group, elem) in HEADER_ATTRIBUTES and length <= _MAX_ATTRIBUTE:
                    self._decode((group, elem), vr, length, end)
                    continue
                elif (group, elem) in _PRESENCE_ONLY:
                    self.values[_PRESENCE_ONLY[(group, elem)]] = True
            if length == _UNDEFINED:
                # SQ, encapsulated pixel data, or UN holding an implicit-VR sequence.
                self._sequence(explicit=explicit and vr != b"UN", walk=vr == b"SQ")
            elif vr == b"SQ" and length:
                item_end = self.f.tell() + length
                if item_end > (end if end is not None else self.size):
                    raise InvalidInstance("truncated: element value runs past the end of the file")
                self._sequence(explicit=explicit, end=item_end, walk=True)
            else:
                self._skip(length, end)
        if end is not None and self.f.tell() != end:
            raise InvalidInstance("truncated: last element runs past the end of the file")

    def _sequence(self, **items_args: Any) -> None:
        """`items()` one level deeper; past `MAX_NESTING` the data set is refused."""
        self._depth += 1
        if self._depth > MAX_NESTING:
            raise InvalidInstance(f"sequences nested deeper than {MAX_NESTING} levels")
        self.items(**items_args)
        self._depth -= 1

    def items(self, *, explicit: bool, end: int | None = None, walk: bool = False) -> None:
        """The items of a sequence up to its delimiter, or up to `end` (defined length).
        Defined-length items are walked when `walk` (an explicit-VR SQ), else skipped
        (pixel data fragments, or an implicit-VR value)."""
        while end is None or self.f.tell() < end:
            group, elem, raw = self._tag()
            (length,) = struct.unpack(self.e + "I", raw[4:8])
            if (group, elem) == _SEQ_END and end is None:
                return
            if (group, elem) != _ITEM:
                raise InvalidInstance(f"expected an item, found ({group:04X},{elem:04X})")
            if length == _UNDEFINED:
                self.dataset(None, explicit=explicit)
            elif walk:
                item_end = self.f.tell() + length
                if item_end > (end if end is not None else self.size):
                    raise InvalidInstance("truncated: item runs past its sequence")
                self.dataset(item_end, explicit=explicit)
            else:
                self._skip(length, end)
        if end is not None and self.f.tell() != end:
            raise InvalidInstance("truncated: item runs past its sequence")

    def _decode(self, tag: tuple[int, int], vr: bytes | None, length: int,
                end: int | None) -> None:
        if self.f.tell() + length > (end if end is not None else self.size):
            raise InvalidInstance("truncated: element value runs past the end of the file")
        raw = self.f.read(length)
        keyword, expected_vr = HEADER_ATTRIBUTES[tag]
        self.values[keyword] = _attribute_value(raw, expected_vr, vr, self.e)

    def _skip(self, length: int, end: int | None) -> None:
        target = self.f.tell() + length
        if target > (end if end is not None else self.size):
            raise InvalidInstance("truncated: element value runs past the end of the file")
        self.f.seek(target)


def _attribute_value(raw: bytes, vr: str, file_vr: bytes | None, endian: str) -> Any:
    """Decode one of the `HEADER_ATTRIBUTES` as pydicom would (None when empty or
    malformed; several values as a list)."""
    if not raw:
        return None
    if vr == "US" and file_vr in (None, b"US", b"UN", b"OW", b"OB"):
        if len(raw) % 2:
            return None
        numbers = list(struct.unpack(f"{endian}{len(raw) // 2}H", raw))
        return numbers[0] if len(numbers) == 1 else numbers
    text = raw.decode("ascii", "replace").strip("\0 ")
    if not text:
        return None
    parts = [p.strip("\0 ") for p in text.split("\\")]
    try:
        if vr == "IS":
            nums: list[Any] = [int(float(p)) if float(p).is_integer() else None for p in parts]
        elif vr == "DS":
            nums = [float(p) for p in parts]
        else:
            return parts[0] if len(parts) == 1 else parts
    except ValueError:
        return None
    if any(n is None for n in nums):
        return None
    return nums[0] if len(nums) == 1 else nums
