"""Series completion: decide when a received series is whole, without a long fixed wait.

A series is announced once every association that delivered it has ended and either
- the headers show it whole (expected count reached, or contiguous InstanceNumbers with
  evenly spaced slices): announced `grace_seconds` after the last association ended, or
- no instance arrived for `quiet_seconds`.
Orthanc waits 60 s of silence and MONAI's gateway 5 s; a whole series here is announced
about 0.3 s after its association ends.

What was announced is persisted per series (`.announced.json` beside the files), so a
restart announces what was stored but never announced, and a later instance (new
SOPInstanceUID) starts a new announcement with the full current file list. A resent
duplicate of an announced series (nothing new) is not announced again.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from service.store import SeriesStore, StoredInstance, check_part10

log = logging.getLogger(__name__)

MARKER = ".announced.json"


@dataclass(frozen=True)
class CompletedSeries:
    study_instance_uid: str
    series_instance_uid: str
    files: list[Path]
    calling_ae: str
    reason: str


# --- pure: what headers say about a series' extent -----------------------------------------


@dataclass(frozen=True)
class SliceInfo:
    """The header fields of one instance that bound the size of its series."""

    instance_number: int | None = None
    position: float | None = None
    """ImagePositionPatient projected on the slice normal, in mm."""
    orientation: tuple[float, ...] | None = None
    acquisition_number: int | None = None
    images_in_acquisition: int | None = None
    temporal_positions: int | None = None
    frames: int = 1


def _int(ds: Dataset | Mapping[str, Any], keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def slice_info(header: Dataset | Mapping[str, Any]) -> SliceInfo:
    """Extract a `SliceInfo` from a header, or from `StoredInstance.values`; missing or
    malformed fields become None."""
    position = orientation = None
    try:
        ipp = [float(v) for v in header.get("ImagePositionPatient")]
        iop = [float(v) for v in header.get("ImageOrientationPatient")]
        if len(ipp) == 3 and len(iop) == 6:
            r, c = iop[:3], iop[3:]
            normal = (r[1] * c[2] - r[2] * c[1], r[2] * c[0] - r[0] * c[2],
                      r[0] * c[1] - r[1] * c[0])
            position = sum(p * n for p, n in zip(ipp, normal, strict=True))
            orientation = tuple(round(v, 3) for v in iop)
    except (AttributeError, TypeError, ValueError):
        pass
    return SliceInfo(
        instance_number=_int(header, "InstanceNumber"),
        position=position,
        orientation=orientation,
        acquisition_number=_int(header, "AcquisitionNumber"),
        images_in_acquisition=_int(header, "ImagesInAcquisition"),
        temporal_positions=_int(header, "NumberOfTemporalPositions"),
        frames=_int(header, "NumberOfFrames") or 1,
    )


def _evenly_spaced(positions: list[float]) -> bool:
    """Distinct slice positions (sorted) step by one spacing, within 1 % or 0.01 mm."""
    if len(positions) < 2:
        return False
    steps = [b - a for a, b in zip(positions, positions[1:], strict=False)]
    step = sorted(steps)[len(steps) // 2]
    if step <= 1e-3:
        return False
    return all(abs(s - step) <= max(0.01 * step, 0.01) for s in steps)


def _distinct_positions(infos: list[SliceInfo]) -> list[float] | None:
    if any(i.position is None for i in infos) or len({i.orientation for i in infos}) != 1:
        return None
    return sorted({round(i.position, 2) for i in infos if i.position is not None})


def whole_reason(infos: Iterable[SliceInfo]) -> str | None:
    """Why the headers show this set of instances to be a whole series, or None."""
    items = list(infos)
    if not items:
        return None
    n = len(items)
    if all(i.frames > 1 for i in items):
        return "multiframe"
    expected = {i.images_in_acquisition for i in items}
    if len(expected) == 1 and None not in expected:
        per_acq: dict[int | None, int] = {}
        for i in items:
            per_acq[i.acquisition_number] = per_acq.get(i.acquisition_number, 0) + 1
        (want,) = expected
        if want and all(count == want for count in per_acq.values()):
            return "images-in-acquisition"
    positions = _distinct_positions(items)
    temporal = {i.temporal_positions for i in items}
    if positions and len(temporal) == 1 and None not in temporal:
        (t,) = temporal
        if t and t > 1 and n == t * len(positions) and _evenly_spaced(positions):
            return "temporal-positions"
    numbers = sorted(i.instance_number for i in items if i.instance_number is not None)
    if n >= 2 and numbers == list(range(1, n + 1)) and positions and _evenly_spaced(positions):
        if n % len(positions) == 0:
            per_position = n // len(positions)
            counts: dict[float, int] = {}
            for i in items:
                key = round(i.position or 0.0, 2)
                counts[key] = counts.get(key, 0) + 1
            if all(c == per_position for c in counts.values()):
                return "contiguous"
    return None


# --- markers: what was announced ------------------------------------------------------------


def read_marker(series_dir: Path) -> set[str] | None:
    """SOPInstanceUIDs announced for this series, or None if never announced."""
    try:
        data = json.loads((series_dir / MARKER).read_text())
        return set(data["sop_instance_uids"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("unreadable marker in %s (%s); treating as never announced", series_dir, exc)
        return None


def mark_announced(store: SeriesStore, study_uid: str, series_uid: str, files: list[Path],
                   reason: str) -> None:
    """Persist that `files` of this series were announced (atomically, fsynced).

    The HTTP gateway calls this after creating a job for an upload, so that a listener
    restart does not announce that series again.
    """
    series_dir = store.series_dir(study_uid, series_uid)
    tmp = series_dir / f"{MARKER}.{os.getpid()}.{threading.get_ident()}.tmp"
    payload = {"sop_instance_uids": sorted(p.stem for p in files), "reason": reason,
               "announced_at": time.time()}
    with open(tmp, "w") as f:
        json.dump(payload, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, series_dir / MARKER)
    fd = os.open(series_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- the tracker ----------------------------------------------------------------------------


@dataclass
class _Pending:
    study: str
    series: str
    calling_ae: str
    last_arrival: float
    last_end: float = -math.inf
    infos: dict[str, SliceInfo] = field(default_factory=dict)
    open_assocs: set[Hashable] = field(default_factory=set)
    recovered: bool = False
    retry_at: float = -math.inf
    failures: int = 0
    _whole: str | None = None
    _whole_n: int = -1

    def whole(self) -> str | None:
        """Cached `whole_reason`, recomputed only when instances were added."""
        if self._whole_n != len(self.infos):
            self._whole, self._whole_n = whole_reason(self.infos.values()), len(self.infos)
        return self._whole


class CompletionTracker:
    """Collects stored instances per series and announces complete series.

    Thread-safe: the listener's association threads call `instance_stored` and
    `association_ended`; a background thread (or a test calling `tick`) announces.
    """

    def __init__(
        self,
        store: SeriesStore,
        on_complete: Callable[[CompletedSeries], None],
        *,
        quiet_seconds: float = 2.0,
        grace_seconds: float = 0.3,
        idle_open_seconds: float | None = None,
        max_retry_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.on_complete = on_complete
        self.quiet = quiet_seconds
        self.grace = grace_seconds
        # A peer that keeps its association open but idle still gets its series announced.
        self.idle_open = idle_open_seconds if idle_open_seconds is not None else max(
            30.0, 10 * quiet_seconds)
        self.max_retry = max_retry_seconds
        self.clock = clock
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._pending: dict[tuple[str, str], _Pending] = {}
        self._ended: OrderedDict[Hashable, None] = OrderedDict()
        self._thread: threading.Thread | None = None
        self._stopping = False

    # events ------------------------------------------------------------------------------

    def instance_stored(self, inst: StoredInstance, calling_ae: str,
                        assoc_key: Hashable | None = None) -> None:
        info = slice_info(inst.values)
        key = (inst.study_instance_uid, inst.series_instance_uid)
        with self._lock:
            known = key in self._pending
        earlier = {} if known else self._earlier_infos(inst)
        with self._lock:
            now = self.clock()
            p = self._pending.get(key)
            if p is None:
                p = self._pending[key] = _Pending(key[0], key[1], calling_ae, now)
                p.infos.update(earlier)
            p.last_arrival = now
            p.calling_ae = calling_ae or p.calling_ae
            p.infos[inst.sop_instance_uid] = info
            if assoc_key is not None and assoc_key not in self._ended:
                p.open_assocs.add(assoc_key)
            else:
                self._wake.notify_all()

    def _earlier_infos(self, inst: StoredInstance) -> dict[str, SliceInfo]:
        """Headers of files stored before this series was last announced, so that a late
        instance is judged with the whole series (rare path: reads only when they exist)."""
        files = self.store.series_files(inst.study_instance_uid, inst.series_instance_uid)
        infos = {}
        for f in files:
            if f.stem == inst.sop_instance_uid:
                continue
            try:
                infos[f.stem] = slice_info(check_part10(f).values)
            except Exception:  # a stored file was whole when stored; be safe anyway
                infos[f.stem] = SliceInfo()
        return infos

    def association_ended(self, assoc_key: Hashable) -> None:
        with self._lock:
            self._ended[assoc_key] = None
            while len(self._ended) > 10_000:
                self._ended.popitem(last=False)
            now = self.clock()
            for p in self._pending.values():
                if assoc_key in p.open_assocs:
                    p.open_assocs.discard(assoc_key)
                    p.last_end = now
            self._wake.notify_all()

    def recover(self) -> int:
        """Queue every stored series whose files were never (all) announced."""
        found = 0
        for study, series in self.store.iter_series():
            files = self.store.series_files(study, series)
            if not files:
                continue
            announced = read_marker(self.store.series_dir(study, series))
            if announced is not None and {p.stem for p in files} <= announced:
                continue
            with self._lock:
                if (study, series) not in self._pending:
                    p = _Pending(study, series, "", self.clock(), recovered=True)
                    p.infos = {f.stem: SliceInfo() for f in files}
                    self._pending[(study, series)] = p
                    found += 1
        if found:
            log.info("recovered %d stored series never announced", found)
        return found

    # deciding ----------------------------------------------------------------------------

    def _due(self, p: _Pending) -> tuple[float, str]:
        """When this series is complete, and why (called under the lock)."""
        if p.open_assocs:
            when, reason = p.last_arrival + self.idle_open, "idle-open-association"
        elif p.recovered:
            when, reason = p.last_arrival + self.quiet, "recovered"
        elif (whole := p.whole()) is not None:
            when, reason = max(p.last_arrival, p.last_end) + self.grace, whole
        else:
            when, reason = max(p.last_arrival + self.quiet, p.last_end), "quiet"
        return max(when, p.retry_at), reason

    def next_deadline(self) -> float | None:
        with self._lock:
            return self._next_deadline_locked()

    def _next_deadline_locked(self) -> float | None:
        return min((self._due(p)[0] for p in self._pending.values()), default=None)

    def tick(self) -> int:
        """Announce every series that is due now; returns how many were announced."""
        with self._lock:
            now = self.clock()
            due = []
            for key, p in list(self._pending.items()):
                when, reason = self._due(p)
                if when <= now:
                    due.append((self._pending.pop(key), reason))
        return sum(self._announce(p, reason) for p, reason in due)

    def _announce(self, p: _Pending, reason: str) -> bool:
        try:
            series_dir = self.store.series_dir(p.study, p.series)
            files = self.store.series_files(p.study, p.series)
            announced = read_marker(series_dir)
            if not files or (announced is not None and {f.stem for f in files} <= announced):
                log.info("series %s: nothing new since its last announcement", p.series)
                return False
            if announced is not None:
                reason = f"{reason}; late instances after an earlier announcement"
            done = CompletedSeries(p.study, p.series, files, p.calling_ae, reason)
            self.on_complete(done)
            mark_announced(self.store, p.study, p.series, files, reason)
        except Exception:
            self._retry(p)
            log.exception("announcing series %s failed; will retry", p.series)
            return False
        log.info("series %s complete (%d files, %s)", p.series, len(files), reason)
        return True

    def _retry(self, p: _Pending) -> None:
        """Put a failed series back, merged with anything that arrived meanwhile."""
        with self._lock:
            p.failures += 1
            p.retry_at = self.clock() + min(self.quiet * 2 ** (p.failures - 1), self.max_retry)
            newer = self._pending.get((p.study, p.series))
            if newer is not None:
                newer.infos = {**p.infos, **newer.infos}
                newer.failures, newer.retry_at = p.failures, p.retry_at
            else:
                self._pending[(p.study, p.series)] = p
            self._wake.notify_all()

    # background thread -------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="series-completion", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._stopping:
                    now, deadline = self.clock(), self._next_deadline_locked()
                    if deadline is not None and deadline <= now:
                        break
                    self._wake.wait(timeout=1.0 if deadline is None else min(deadline - now, 1.0))
                if self._stopping:
                    return
            try:
                self.tick()
            except Exception:  # never let the thread die; tick already logs per series
                log.exception("completion tick failed")
                time.sleep(0.5)
