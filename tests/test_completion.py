"""Series completion with a fake clock: whole-series rules, quiet period, late instances,
retries after a failing callback, recovery after a restart."""

from __future__ import annotations

from pathlib import Path

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
from service.store import SeriesStore
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
    def __init__(self, root: Path, *, fail: int = 0) -> None:
        self.root = root
        self.store = SeriesStore(root / "store")
        self.clock = Clock()
        self.calls: list[CompletedSeries] = []
        self.fail = fail
        self.tracker = self.new_tracker()
        self.study, self.series = generate_uid(), generate_uid()
        self.n = 0

    def new_tracker(self) -> CompletionTracker:
        return CompletionTracker(self.store, self.on_complete, quiet_seconds=2.0,
                                 grace_seconds=0.3, clock=self.clock)

    def on_complete(self, c: CompletedSeries) -> None:
        if self.fail:
            self.fail -= 1
            raise RuntimeError("job store down")
        self.calls.append(c)

    def receive(self, assoc: object, *, n: int | None = None, sop: str | None = None,
                series: str | None = None) -> None:
        self.n += 1
        src = make_mr(self.root / "in.dcm", study=self.study, series=series or self.series,
                      n=n or self.n, sop=sop, size=8)
        self.tracker.instance_stored(self.store.put(src), "PACS", assoc)

    def advance(self, dt: float) -> int:
        self.clock.t += dt
        return self.tracker.tick()


@pytest.fixture
def h(tmp_path: Path) -> Harness:
    return Harness(tmp_path)


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


def test_failing_callback_is_retried_not_lost(tmp_path: Path) -> None:
    h = Harness(tmp_path, fail=2)
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


def test_restart_announces_stored_but_unannounced(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.receive("a1")
    h.receive("a1")
    other = generate_uid()
    h.receive("a1", series=other)
    h.tracker.association_ended("a1")
    h.advance(0.31)  # `other` (one slice) still waits for quiet; h.series announced
    assert [c.series_instance_uid for c in h.calls] == [h.series]
    # crash: a fresh tracker over the same store
    h.tracker = h.new_tracker()
    assert h.tracker.recover() == 1
    assert h.advance(1.9) == 0
    assert h.advance(0.2) == 1
    assert h.calls[-1].series_instance_uid == other and h.calls[-1].reason == "recovered"
    assert h.tracker.recover() == 0


def test_gateway_marker_prevents_recovery(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.receive(None)
    files = h.store.series_files(h.study, h.series)
    mark_announced(h.store, h.study, h.series, files, "http upload")
    assert h.new_tracker().recover() == 0


def test_background_thread_announces_promptly(tmp_path: Path) -> None:
    import time

    got: list[float] = []
    store = SeriesStore(tmp_path / "store")
    tracker = CompletionTracker(store, lambda c: got.append(time.monotonic()),
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
