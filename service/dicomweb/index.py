"""What DICOMweb serves: every instance the service holds, sources and results alike.

No table of its own: the index is read from the file system on each query, the series
store (`<store>/<Study>/<Series>/<SOP>.dcm`, the sources) and every job's output folder
(`<jobs>/<job>/output/<nn>/*.dcm`, the synthetic series). Headers are read without
pixels and kept in a small cache keyed by path, size and modification time, so a query
re-reads only files that changed.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from dicom_synth.settings import Settings

_CACHE_SIZE = 20_000


@dataclass(frozen=True)
class IndexedInstance:
    path: Path
    header: Dataset  # without pixel data

    @property
    def study_uid(self) -> str:
        return str(self.header.get("StudyInstanceUID", ""))

    @property
    def series_uid(self) -> str:
        return str(self.header.get("SeriesInstanceUID", ""))

    @property
    def sop_uid(self) -> str:
        return str(self.header.get("SOPInstanceUID", ""))


class _HeaderCache:
    def __init__(self, size: int = _CACHE_SIZE) -> None:
        self._items: OrderedDict[Path, tuple[tuple[int, int], Dataset | None]] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def header(self, path: Path) -> Dataset | None:
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        key = (st.st_size, st.st_mtime_ns)
        with self._lock:
            hit = self._items.get(path)
            if hit is not None and hit[0] == key:
                self._items.move_to_end(path)
                return hit[1]
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            ds.file_meta  # noqa: B018 - a file without meta still reads; keep it as it is
        except Exception:
            ds = None  # not an instance (a marker, a partial file): never served
        with self._lock:
            self._items[path] = (key, ds)
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return ds


_CACHE = _HeaderCache()


def _source_files(settings: Settings, study: str | None) -> Iterator[Path]:
    root = settings.store_dir
    if not root.is_dir():
        return
    studies = [root / study] if study else [p for p in root.iterdir() if not p.name.startswith(".")]
    for study_dir in studies:
        if not study_dir.is_dir():
            continue
        yield from sorted(study_dir.glob("*/*.dcm"))


def _result_files(settings: Settings) -> Iterator[Path]:
    root = settings.jobs_dir
    if not root.is_dir():
        return
    yield from sorted(root.glob("*/output/*/*.dcm"))


def instances(settings: Settings, study: str | None = None, series: str | None = None,
              sop: str | None = None) -> list[IndexedInstance]:
    """Every instance held (one per SOPInstanceUID), optionally of one study, series, instance."""
    seen: dict[str, IndexedInstance] = {}
    for path in [*_source_files(settings, study), *_result_files(settings)]:
        header = _CACHE.header(path)
        if header is None:
            continue
        inst = IndexedInstance(path, header)
        if (study and inst.study_uid != study) or (series and inst.series_uid != series) or (
                sop and inst.sop_uid != sop):
            continue
        seen.setdefault(inst.sop_uid, inst)
    return sorted(seen.values(), key=_order)


def _order(inst: IndexedInstance) -> tuple:
    number = inst.header.get("InstanceNumber")
    try:
        n = int(number) if number not in (None, "") else 0
    except (TypeError, ValueError):
        n = 0
    return inst.study_uid, inst.series_uid, n, inst.sop_uid
