"""Find DICOM files, group them into series, and load a series as sorted slices.

Pure reading: no network, no models. Enhanced (multi-frame) objects are split into one
single-frame-like header per frame, so everything downstream (classifier, synthesis,
the derived-series builder) sees one header per slice with flat geometry attributes.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom import Dataset, dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.errors import InvalidDicomError

# Top-level attributes that do not belong in a per-frame header.
_FRAME_EXCLUDED = {
    "PixelData",
    "FloatPixelData",
    "DoubleFloatPixelData",
    "PerFrameFunctionalGroupsSequence",
    "SharedFunctionalGroupsSequence",
    "NumberOfFrames",
    "DimensionIndexSequence",
    "DimensionOrganizationSequence",
}


class SeriesReadError(ValueError):
    """A series cannot be read as an image volume; the message says why."""


@dataclass
class SeriesFiles:
    """The files of one series found under some paths."""

    series_instance_uid: str
    study_instance_uid: str
    series_description: str
    modality: str
    sop_class_uids: set[str] = field(default_factory=set)
    files: list[Path] = field(default_factory=list)


@dataclass
class LoadedSeries:
    """Slices sorted along the slice normal (or by InstanceNumber without geometry).

    `slices[i]` is a header without pixel data; `frame_numbers[i]` is the 1-based frame
    in `files[i]` for enhanced sources, None for single-frame ones; `volume[i]` is the
    slice's pixels in modality units (rescale applied), float32.
    """

    slices: list[Dataset]
    files: list[Path]
    frame_numbers: list[int | None]
    volume: np.ndarray | None = None

    @property
    def series_instance_uid(self) -> str:
        return str(self.slices[0].SeriesInstanceUID)

    @property
    def study_instance_uid(self) -> str:
        return str(self.slices[0].StudyInstanceUID)


def read_header(path: Path) -> Dataset | None:
    """The header of a DICOM file, or None when the file is not DICOM.

    Accepts Part 10 files and raw datasets without preamble (as some exports write
    them), but only when they carry a SOPInstanceUID, so random files are not taken.
    """
    try:
        ds = dcmread(path, stop_before_pixels=True)
    except InvalidDicomError:
        try:
            ds = dcmread(path, stop_before_pixels=True, force=True)
        except Exception:
            return None
        if "SOPInstanceUID" not in ds or "SeriesInstanceUID" not in ds:
            return None
    except Exception:
        return None
    if "SeriesInstanceUID" not in ds:
        return None
    return ds


def find_dicom_files(paths: Iterable[str | os.PathLike[str]]) -> Iterator[Path]:
    """Every file under the paths, in a stable order (any names, nested folders)."""
    for p in paths:
        root = Path(p)
        if root.is_file():
            yield root
        elif root.is_dir():
            for dirpath, dirnames, filenames in os.walk(root):
                dirnames.sort()
                for name in sorted(filenames):
                    if name.startswith(".") or name.upper() == "DICOMDIR":
                        continue
                    yield Path(dirpath) / name
        else:
            raise FileNotFoundError(f"no such file or folder: {root}")


def group_series(paths: Iterable[str | os.PathLike[str]]) -> list[SeriesFiles]:
    """DICOM files under the paths grouped by SeriesInstanceUID; non-DICOM files skipped."""
    groups: dict[str, SeriesFiles] = {}
    for path in find_dicom_files(paths):
        ds = read_header(path)
        if ds is None:
            continue
        uid = str(ds.SeriesInstanceUID)
        group = groups.get(uid)
        if group is None:
            group = groups[uid] = SeriesFiles(
                series_instance_uid=uid,
                study_instance_uid=str(ds.get("StudyInstanceUID", "")),
                series_description=str(ds.get("SeriesDescription", "")),
                modality=str(ds.get("Modality", "")),
            )
        group.files.append(path)
        if "SOPClassUID" in ds:
            group.sop_class_uids.add(str(ds.SOPClassUID))
    return list(groups.values())


def _first_item(ds: Dataset, keyword: str) -> Dataset | None:
    seq = ds.get(keyword)
    if seq is None or len(seq) == 0:
        return None
    return seq[0]


def _functional_value(
    per_frame: Dataset | None, shared: Dataset | None, macro: str, keyword: str
) -> object | None:
    """A value from a functional group macro, per-frame first, then shared."""
    for group in (per_frame, shared):
        if group is None:
            continue
        item = _first_item(group, macro)
        if item is not None and keyword in item:
            return item[keyword].value
    return None


def split_frames(ds: Dataset) -> list[Dataset]:
    """One flat header per frame of an enhanced object (geometry, rescale, timing)."""
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    base = Dataset()
    for elem in ds:
        if elem.keyword not in _FRAME_EXCLUDED:
            base.add(elem)
    base.file_meta = getattr(ds, "file_meta", FileMetaDataset())
    shared = _first_item(ds, "SharedFunctionalGroupsSequence")
    per_frames = ds.get("PerFrameFunctionalGroupsSequence") or []
    out: list[Dataset] = []
    lookups = [
        ("PlanePositionSequence", "ImagePositionPatient"),
        ("PlaneOrientationSequence", "ImageOrientationPatient"),
        ("PixelMeasuresSequence", "PixelSpacing"),
        ("PixelMeasuresSequence", "SliceThickness"),
        ("PixelMeasuresSequence", "SpacingBetweenSlices"),
        ("PixelValueTransformationSequence", "RescaleSlope"),
        ("PixelValueTransformationSequence", "RescaleIntercept"),
        ("FrameVOILUTSequence", "WindowCenter"),
        ("FrameVOILUTSequence", "WindowWidth"),
        ("MRDiffusionSequence", "DiffusionBValue"),
        ("MREchoSequence", "EffectiveEchoTime"),
        ("MRTimingAndRelatedParametersSequence", "RepetitionTime"),
        ("MRTimingAndRelatedParametersSequence", "FlipAngle"),
        ("FrameContentSequence", "TemporalPositionIndex"),
        ("FrameContentSequence", "FrameAcquisitionDateTime"),
        ("MRImageFrameTypeSequence", "FrameType"),
        ("CTImageFrameTypeSequence", "FrameType"),
    ]
    for i in range(n_frames):
        per_frame = per_frames[i] if i < len(per_frames) else None
        frame = Dataset()
        frame.update(base)
        frame.file_meta = base.file_meta
        for macro, keyword in lookups:
            value = _functional_value(per_frame, shared, macro, keyword)
            if value is not None:
                setattr(frame, keyword, value)
        if "EffectiveEchoTime" in frame and "EchoTime" not in frame:
            frame.EchoTime = frame.EffectiveEchoTime
        if "TemporalPositionIndex" in frame and "TemporalPositionIdentifier" not in frame:
            frame.TemporalPositionIdentifier = frame.TemporalPositionIndex
        frame.InstanceNumber = i + 1
        out.append(frame)
    return out


def slice_position(ds: Dataset) -> float | None:
    """Distance of the slice along its normal, or None without geometry."""
    try:
        iop = np.asarray([float(v) for v in ds.ImageOrientationPatient], dtype=float)
        ipp = np.asarray([float(v) for v in ds.ImagePositionPatient], dtype=float)
    except (AttributeError, TypeError, ValueError):
        return None
    if iop.shape != (6,) or ipp.shape != (3,):
        return None
    normal = np.cross(iop[:3], iop[3:])
    return float(np.dot(normal, ipp))


def _is_multiframe(ds: Dataset) -> bool:
    return "PerFrameFunctionalGroupsSequence" in ds or int(ds.get("NumberOfFrames", 1) or 1) > 1


def load_series(files: Sequence[Path], pixels: bool = True) -> LoadedSeries:
    """Read the files of one series into sorted slices (and their pixels when asked).

    Raises SeriesReadError when the files hold more than one series, no image, colour
    images, or slices of different sizes.
    """
    if not files:
        raise SeriesReadError("no files")
    entries: list[tuple[Dataset, Path, int | None, Dataset | None]] = []
    series_uids: set[str] = set()
    for path in files:
        full = dcmread(path, stop_before_pixels=not pixels, force=True)
        if "SeriesInstanceUID" not in full:
            raise SeriesReadError(f"{path.name}: no SeriesInstanceUID")
        series_uids.add(str(full.SeriesInstanceUID))
        if _is_multiframe(full):
            for i, frame in enumerate(split_frames(full)):
                entries.append((frame, Path(path), i + 1, full if pixels else None))
        else:
            header = Dataset()
            for elem in full:
                if elem.keyword not in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
                    header.add(elem)
            header.file_meta = getattr(full, "file_meta", FileMetaDataset())
            entries.append((header, Path(path), None, full if pixels else None))
    if len(series_uids) > 1:
        raise SeriesReadError(f"files belong to {len(series_uids)} series, expected one")

    positions = [slice_position(e[0]) for e in entries]
    if all(p is not None for p in positions):
        order = sorted(range(len(entries)), key=lambda i: (positions[i], _instance_number(entries[i][0])))
    else:
        order = sorted(range(len(entries)), key=lambda i: _instance_number(entries[i][0]))
    entries = [entries[i] for i in order]

    volume = None
    if pixels:
        volume = _stack_pixels(entries)
    return LoadedSeries(
        slices=[e[0] for e in entries],
        files=[e[1] for e in entries],
        frame_numbers=[e[2] for e in entries],
        volume=volume,
    )


def _instance_number(ds: Dataset) -> int:
    try:
        return int(ds.get("InstanceNumber", 0) or 0)
    except (TypeError, ValueError):
        return 0


def _stack_pixels(entries: list[tuple[Dataset, Path, int | None, Dataset | None]]) -> np.ndarray:
    """Pixels of every slice in modality units; decoded once per file."""
    decoded: dict[int, np.ndarray] = {}
    planes: list[np.ndarray] = []
    for header, _path, frame_no, full in entries:
        assert full is not None
        if "PixelData" not in full:
            raise SeriesReadError("an instance has no pixel data (not an image)")
        if int(full.get("SamplesPerPixel", 1)) != 1:
            raise SeriesReadError("colour images are not supported")
        key = id(full)
        if key not in decoded:
            try:
                decoded[key] = full.pixel_array
            except Exception as exc:  # decoder missing, corrupt stream, truncated file
                raise SeriesReadError(f"cannot decode pixel data: {exc}") from exc
        arr = decoded[key]
        plane = arr[frame_no - 1] if frame_no is not None and arr.ndim == 3 else arr
        slope = float(header.get("RescaleSlope", 1) or 1)
        intercept = float(header.get("RescaleIntercept", 0) or 0)
        planes.append(plane.astype(np.float32) * slope + intercept)
    shapes = {p.shape for p in planes}
    if len(shapes) != 1:
        raise SeriesReadError(f"slices have different sizes: {sorted(shapes)}")
    return np.stack(planes).astype(np.float32, copy=False)


def pixel_data_problem(ds: Dataset) -> str | None:
    """Why the pixel data of a fully read dataset cannot be whole, or None.

    Catches truncated files, which parse (pydicom reads what is there) but would
    fail, or worse, decode garbage, much later in a worker.
    """
    if "PixelData" not in ds:
        return "no pixel data"
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if ts is not None and ts.is_compressed:
        return None  # encapsulated: fragment parsing already failed if it was cut
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        expected = int(ds.Rows) * int(ds.Columns) * frames * int(ds.get("SamplesPerPixel", 1))
        expected = expected * int(ds.BitsAllocated) // 8
    except (AttributeError, TypeError, ValueError) as exc:
        return f"incomplete image attributes ({exc})"
    actual = len(ds.PixelData or b"")
    if actual < expected:
        return f"pixel data truncated: {actual} of {expected} bytes"
    return None


def read_whole(path: Path) -> tuple[Dataset | None, str | None]:
    """Read a file completely; (dataset, None) when it is a whole DICOM image,
    (dataset or None, reason) otherwise."""
    header = read_header(path)
    if header is None:
        return None, "not DICOM"
    try:
        ds = dcmread(path, force=True)
        _ = ds.get("PixelData")
    except Exception as exc:
        return header, f"unreadable: {exc}"
    return ds, pixel_data_problem(ds)
