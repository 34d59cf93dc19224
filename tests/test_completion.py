"""Series completion with a fake clock over a real redis-server: whole-series rules, quiet
period, late instances that supersede, retries after a failing callback, recovery after
a restart, and several listener replicas sharing one Redis."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from service.completion import (
    MARKER,
    CompletedSeries,
    CompletionTracker,
    SliceInfo,
    mark_announced,
    slice_info,
    whole_reason,
)
from service.completion_state import SharedCompletionState, redis_client
from service.store import SeriesStore
from tests.peers import RedisPeer
from tests.test_store import make_mr


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def stack(n: int, *, spacing: float = 2.5, start: int = 1, **kw) -> list[SliceInfo]:
    return [SliceInfo(instance_number=start + i, position=i * spacing,
                      orientation=(1, 0, 0, 0, 1, 0), **kw) for i in range(n)]


# --- pure rules --------------------------------------------------------------------------


def test_contiguous_evenly_spaced_is_whole() -> None:
    assert whole_reason(stack(48)) == "contiguous"


def test_gap_in_instance_numbers_is_not_whole() -> None:
    s = stack(48)
    del s[20]
    assert whole_reason(s) is None


def test_missing_slice_position_is_not_whole() -> None:
    s = stack(10)
    s = [*s[:5], *[SliceInfo(instance_number=i.instance_number, position=i.position + 2.5,
                             orientation=i.orientation) for i in s[5:]]]
    assert whole_reason(s) is None  # positions 0..10 then 15..: uneven


def test_single_slice_is_not_whole() -> None:
    assert whole_reason(stack(1)) is None


def test_not_starting_at_one_is_not_whole() -> None:
    assert whole_reason(stack(10, start=2)) is None


def test_images_in_acquisition() -> None:
    infos = [SliceInfo(images_in_acquisition=3, acquisition_number=1) for _ in range(3)]
    assert whole_reason(infos) == "images-in-acquisition"
    assert whole_reason(infos[:2]) is None


def test_temporal_positions_times_slices() -> None:
    infos = [SliceInfo(instance_number=100 + 7 * t + z, position=z * 3.0,
                       orientation=(1, 0, 0, 0, 1, 0), temporal_positions=4)
             for t in range(4) for z in range(7)]
    assert whole_reason(infos) == "temporal-positions"
    assert whole_reason(infos[:-1]) is None


def test_multiframe_objects_are_whole() -> None:
    assert whole_reason([SliceInfo(frames=176)]) == "multiframe"


def test_slice_info_from_header() -> None:
    ds = Dataset()
    ds.InstanceNumber = "7"
    ds.ImagePositionPatient = [10, 20, 30]
    ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]  # sagittal: normal is -x
    ds.NumberOfTemporalPositions = ""
    info = slice_info(ds)
    assert info.instance_number == 7 and info.temporal_positions is None
    assert info.position == pytest.approx(-10.0)
    assert slice_info(Dataset()) == SliceInfo()


# --- the tracker ---------------------------------------------------------------------------


class Harness:
    """One listener replica's tracker over a real redis-server and a store; `replica()`
    makes another one sharing both (and the clock)."""

    def __init__(self, root: Path, redis_url: str, *, fail: int = 0, clock: Clock | None = None,
                 store: SeriesStore | None = None, calls: list | None = None) -> None:
        self.root = root
        self.redis_url = redis_url
        self.store = store or SeriesStore(root / "store")
        self.clock = clock or Clock()
        self.calls: list[CompletedSeries] = calls if calls is not None else []
        self.fail = fail
        self.tracker = self.new_tracker()
        self.study, self.series = generate_uid(), generate_uid()
        self.n = 0

    def new_tracker(self, **kw) -> CompletionTracker:
        state = SharedCompletionState(redis_client(self.redis_url))
        return CompletionTracker(self.store, self.on_complete, state, quiet_seconds=2.0,
                                 grace_seconds=0.3, clock=self.clock, **kw)

    def replica(self, **kw) -> Harness:
        other = Harness(self.root, self.redis_url, clock=self.clock, store=SeriesStore(self.root / "store"),
                        calls=self.calls)
        other.tracker = other.new_tracker(**kw)
        other.study, other.series = self.study, self.series
        return other

    def on_complete(self, c: CompletedSeries) -> str:
        if self.fail:
            self.fail -= 1
            raise RuntimeError("job store down")
        self.calls.append(c)
        return f"job{len(self.calls)}"

    def receive(self, assoc: object, *, n: int | None = None, sop: str | None = None,
                series: str | None = None, **header) -> None:
        self.n += 1
        src = make_mr(self.root / f"in{id(self)}.dcm", study=self.study, series=series or self.series,
                      n=n or self.n, sop=sop, size=8)
        if header:
            ds = pydicom.dcmread(src)
            for k, v in header.items():
                setattr(ds, k, v)
            ds.save_as(src)
        self.tracker.instance_stored(self.store.put(src), "PACS", assoc)

    def advance(self, dt: float) -> int:
        self.clock.t += dt
        return self.tracker.tick()


@pytest.fixture
def h(tmp_path: Path, redis_server: RedisPeer) -> Harness:
    return Harness(tmp_path, redis_server.url)


def test_whole_series_announced_grace_after_association_end(h: Harness) -> None:
    for _ in range(5):
        h.receive("a1")
    assert h.advance(20) == 0  # association still open, not idle long enough
    h.tracker.association_ended("a1")
    assert h.tracker.next_deadline() == pytest.approx(h.clock.t + 0.3)
    assert h.advance(0.29) == 0
    assert h.advance(0.02) == 1
    (c,) = h.calls
    assert (c.study_instance_uid, c.series_instance_uid) == (h.study, h.series)
    assert len(c.files) == 5 and c.calling_ae == "PACS" and c.reason == "contiguous"
    assert (h.store.series_dir(h.study, h.series) / MARKER).exists()


def test_incomplete_series_waits_quiet_period(h: Harness) -> None:
    for n in (1, 2, 4):  # gap at 3
        h.receive("a1", n=n)
    h.tracker.association_ended("a1")
    assert h.advance(1.9) == 0
    assert h.advance(0.2) == 1
    assert h.calls[0].reason == "quiet"


def test_quiet_counts_from_last_instance_not_association_end(h: Harness) -> None:
    h.receive("a1", n=5)
    h.advance(1.5)
    h.tracker.association_ended("a1")
    assert h.advance(0.4) == 0
    assert h.advance(0.2) == 1


def test_series_over_two_associations_waits_for_both(h: Harness) -> None:
    h.receive("a1")
    h.receive("a2")
    h.tracker.association_ended("a1")
    assert h.advance(5) == 0
    h.receive("a2")
    h.tracker.association_ended("a2")
    assert h.advance(0.31) == 1
    assert len(h.calls[0].files) == 3


def test_idle_open_association_still_completes(h: Harness) -> None:
    h.receive("a1")
    assert h.advance(29) == 0
    assert h.advance(1.1) == 1
    assert h.calls[0].reason == "idle-open-association"


def test_instance_after_its_association_ended_is_not_held_open(h: Harness) -> None:
    h.tracker.association_ended("a1")  # e.g. an abort racing the last store handler
    h.receive("a1")
    h.receive("a1")
    assert h.advance(0.31) == 1


def test_late_instance_is_a_new_announcement_with_all_files(h: Harness) -> None:
    for _ in range(3):
        h.receive("a1")
    h.tracker.association_ended("a1")
    assert h.advance(0.31) == 1
    h.receive("a2", n=4)
    h.tracker.association_ended("a2")
    assert h.advance(0.31) == 1
    first, second = h.calls
    assert len(first.files) == 3 and len(second.files) == 4
    assert "late instances" in second.reason


def test_resent_duplicates_are_not_announced_again(h: Harness) -> None:
    sops = [generate_uid() for _ in range(3)]
    for i, sop in enumerate(sops):
        h.receive("a1", n=i + 1, sop=sop)
    h.tracker.association_ended("a1")
    assert h.advance(0.31) == 1
    for i, sop in enumerate(sops):
        h.receive("a2", n=i + 1, sop=sop)
    h.tracker.association_ended("a2")
    assert h.advance(3) == 0
    assert len(h.calls) == 1


def test_failing_callback_is_retried_not_lost(tmp_path: Path, redis_server: RedisPeer) -> None:
    h = Harness(tmp_path, redis_server.url, fail=2)
    h.receive("a1")
    h.receive("a1")
    h.tracker.association_ended("a1")
    assert h.advance(0.31) == 0  # fails, retry after 2 s
    assert not (h.store.series_dir(h.study, h.series) / MARKER).exists()
    assert h.advance(1.9) == 0
    assert h.advance(0.2) == 0  # fails again, retry after 4 s
    h.receive("a2")  # meanwhile another instance
    h.tracker.association_ended("a2")
    assert h.advance(3.5) == 0
    assert h.advance(0.6) == 1
    assert len(h.calls[0].files) == 3


def test_restart_announces_stored_but_unannounced(tmp_path: Path, redis_factory) -> None:
    h = Harness(tmp_path, redis_factory().url)
    h.receive("a1")
    h.receive("a1")
    other = generate_uid()
    h.receive("a1", series=other)
    h.tracker.association_ended("a1")
    h.advance(0.31)  # `other` (one slice) still waits for quiet; h.series announced
    assert [c.series_instance_uid for c in h.calls] == [h.series]
    # crash, and Redis lost its state too: a fresh tracker over the same store, a new Redis
    h.redis_url = redis_factory().url
    h.tracker = h.new_tracker()
    assert h.tracker.recover() == 1
    assert h.advance(1.9) == 0
    assert h.advance(0.2) == 1
    assert h.calls[-1].series_instance_uid == other and h.calls[-1].reason == "recovered"
    assert h.tracker.recover() == 0


def test_gateway_marker_prevents_recovery(tmp_path: Path, redis_server: RedisPeer) -> None:
    h = Harness(tmp_path, redis_server.url)
    h.receive(None)
    files = h.store.series_files(h.study, h.series)
    mark_announced(h.store, h.study, h.series, files, "http upload")
    assert h.new_tracker().recover() == 0


def test_background_thread_announces_promptly(tmp_path: Path, redis_server: RedisPeer) -> None:
    import time

    got: list[float] = []
    store = SeriesStore(tmp_path / "store")
    tracker = CompletionTracker(store, lambda c: got.append(time.monotonic()),
                                SharedCompletionState(redis_client(redis_server.url)),
                                quiet_seconds=2.0, grace_seconds=0.3)
    tracker.start()
    try:
        study, series = generate_uid(), generate_uid()
        for n in (1, 2, 3):
            src = make_mr(tmp_path / "in.dcm", study=study, series=series, n=n, size=8)
            tracker.instance_stored(store.put(src), "PACS", 1)
        t_end = time.monotonic()
        tracker.association_ended(1)
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        tracker.stop()
    assert got and 0.3 <= got[0] - t_end < 0.6


# --- incomplete by the headers, supersede, several replicas ---------------------------------


def test_declared_count_not_met_is_not_whole_however_contiguous() -> None:
    infos = [SliceInfo(instance_number=i + 1, position=2.5 * i, orientation=(1, 0, 0, 0, 1, 0),
                       acquisition_number=1, images_in_acquisition=48) for i in range(48)]
    assert whole_reason(infos) == "images-in-acquisition"
    assert whole_reason(infos[:37]) is None  # 1..37 contiguous, evenly spaced, yet 37 of 48
    multi = [SliceInfo(instance_number=i + 1, position=2.5 * i, orientation=(1, 0, 0, 0, 1, 0),
                       temporal_positions=3) for i in range(12)]
    assert whole_reason(multi) == "contiguous"  # one phase of three per series
    assert whole_reason([*multi, multi[0]]) is None


def test_37_of_48_declared_waits_for_quiet_and_the_rest_makes_one_announcement(h: Harness) -> None:
    for n in range(1, 38):
        h.receive("a1", n=n, ImagesInAcquisition=48, AcquisitionNumber=1)
    h.tracker.association_ended("a1")
    assert h.advance(1.9) == 0  # no grace announcement of the 37
    for n in range(38, 49):
        h.receive("a2", n=n, ImagesInAcquisition=48, AcquisitionNumber=1)
    h.tracker.association_ended("a2")
    assert h.advance(0.31) == 1
    (c,) = h.calls
    assert len(c.files) == 48 and c.reason == "images-in-acquisition" and c.supersedes is None


def test_refused_instance_makes_a_whole_looking_series_wait_for_quiet(h: Harness) -> None:
    for _ in range(5):
        h.receive("a1")
    h.tracker.instance_refused("a1")  # e.g. the sixth answered 0xA700 (disk full)
    h.tracker.association_ended("a1")
    assert h.advance(1.9) == 0
    assert h.advance(0.2) == 1
    assert h.calls[0].reason == "quiet; instances were refused"
    h.receive("a2")  # the resend, over an association that refuses nothing
    h.tracker.association_ended("a2")
    assert h.advance(0.31) == 1
    assert h.calls[1].reason.startswith("contiguous") and h.calls[1].supersedes == "job1"


def test_a_resend_after_a_failed_job_is_announced_again_and_supersedes_it(h: Harness) -> None:
    failed_jobs = {"job1"}
    h.tracker = h.new_tracker(rerun_last_job=lambda job_id: job_id in failed_jobs)
    sops = [generate_uid() for _ in range(3)]
    for attempt in ("a1", "a2", "a3"):  # job1 failed; job2 (from the re-send a2) did not
        for i, sop in enumerate(sops):
            h.receive(attempt, n=i + 1, sop=sop)
        h.tracker.association_ended(attempt)
        h.advance(0.31)
    first, second = h.calls
    assert second.supersedes == "job1" and len(second.files) == 3 and "re-sent after job job1 failed" in second.reason
    assert json.loads((h.store.series_dir(h.study, h.series) / MARKER).read_text())["job_id"] == "job2"


def test_late_instances_supersede_the_earlier_job(h: Harness) -> None:
    for _ in range(3):
        h.receive("a1")
    h.tracker.association_ended("a1")
    assert h.advance(0.31) == 1
    h.receive("a2")
    h.tracker.association_ended("a2")
    assert h.advance(0.31) == 1
    first, second = h.calls
    assert first.supersedes is None and second.supersedes == "job1" and len(second.files) == 4
    marker = json.loads((h.store.series_dir(h.study, h.series) / MARKER).read_text())
    assert marker["job_id"] == "job2" and marker["supersedes"] == "job1"


def test_series_over_two_replicas_is_announced_once_when_both_end(h: Harness) -> None:
    other = h.replica()
    h.receive("a1", n=1)
    other.receive("b1", n=2)
    h.receive("a1", n=3)
    other.receive("b1", n=4)
    h.tracker.association_ended("a1")
    assert h.advance(5) == 0 and other.tracker.tick() == 0  # b1 still open on the other replica
    other.tracker.association_ended("b1")
    h.clock.t += 0.31
    assert h.tracker.tick() + other.tracker.tick() == 1
    (c,) = h.calls
    assert len(c.files) == 4 and c.reason == "contiguous"
    assert h.advance(60) == 0 and other.tracker.tick() == 0


def test_a_dead_replicas_association_stops_holding_the_series(h: Harness) -> None:
    dead = h.replica(assoc_ttl_seconds=5.0)
    h.receive("a1", n=1)
    dead.receive("b1", n=2)  # then that replica dies: no end, no heartbeat
    h.tracker.association_ended("a1")
    assert h.advance(4.9) == 0
    assert h.advance(0.2) == 1  # not the 30 s idle-open wait
    assert len(h.calls[0].files) == 2


def test_replicas_ticking_at_once_announce_once(h: Harness) -> None:
    import threading

    others = [h.replica() for _ in range(3)]
    for n in range(1, 9):
        others[n % 3].receive(f"x{n % 3}", n=n)
    for i, o in enumerate(others):
        o.tracker.association_ended(f"x{i}")
    h.clock.t += 1.0
    counts: list[int] = []
    barrier = threading.Barrier(4)

    def run(t) -> None:
        barrier.wait()
        counts.append(sum(t.tick() for _ in range(20)))

    threads = [threading.Thread(target=run, args=(t.tracker,)) for t in [h, *others]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(counts) == 1 and len(h.calls) == 1 and len(h.calls[0].files) == 8


def test_instances_stored_while_redis_is_down_are_announced_once_it_is_back(
        tmp_path: Path, redis_server: RedisPeer) -> None:
    import subprocess

    import redis as redis_lib

    from tests.peers import PEER_ENV, require_binary

    h = Harness(tmp_path, redis_server.url)
    h.receive("a1")
    redis_server.stop()  # no persistence: its state is lost
    with pytest.raises(redis_lib.RedisError):
        h.receive("a1")  # stored in the store, but not in Redis
    with pytest.raises(redis_lib.RedisError):
        h.tracker.association_ended("a1")
    with pytest.raises(redis_lib.RedisError):
        h.advance(1)
    proc = subprocess.Popen([require_binary("redis-server"), "--port", str(redis_server.port), "--bind",
                             "127.0.0.1", "--save", "", "--appendonly", "no"], env=PEER_ENV,
                            stdout=subprocess.DEVNULL)
    try:
        for _ in range(200):
            if redis_server.ping():
                break
            time.sleep(0.02)
        assert h.advance(0.1) == 0  # recovers both stored instances from the store
        assert h.advance(2.0) == 1
        assert h.calls[0].reason == "recovered" and len(h.calls[0].files) == 2
    finally:
        proc.terminate()
        proc.wait(10)
