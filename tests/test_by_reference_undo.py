"""The C-MOVE door's bookkeeping on a real series store (service.fetch_move): the series
is marked announced before the move, so the listener's completion makes no job of it,
and a failed move puts the store back as it was, instances and record alike."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from pydicom import dcmread

from models.dce.phantom_dicom import write_phantom_series
from service.completion import MARKER, mark_announced, read_marker
from service.fetch_move import _mark, _undo
from service.store import SeriesStore


def _put(store: SeriesStore, files: list[Path], tmp: Path) -> None:
    for f in files:  # put() moves its file: store copies
        copy = tmp / f.name
        shutil.copy(f, copy)
        store.put(copy)


def _uids(files: list[Path]) -> tuple[str, str, set[str]]:
    ds = [dcmread(f, stop_before_pixels=True) for f in files]
    return ds[0].StudyInstanceUID, ds[0].SeriesInstanceUID, {d.SOPInstanceUID for d in ds}


def test_a_failed_move_into_an_empty_store_leaves_nothing(tmp_path) -> None:
    store = SeriesStore(tmp_path / "store")
    files = write_phantom_series(tmp_path / "src", seed=941, n_slices=3, size=32)
    study, series, sops = _uids(files)
    series_dir = store.series_dir(study, series)
    series_dir.mkdir(parents=True)
    _mark(store, study, series, sops, "fetching by reference (C-MOVE)")
    _put(store, files, tmp_path)  # what the listener stored of the move
    assert read_marker(series_dir) == sops  # its completion finds nothing new: no job
    _undo(store, study, series, set(), None)
    assert not (tmp_path / "store" / study).exists()
    assert list(store.iter_series()) == []


def test_a_failed_move_keeps_what_was_there_and_its_record(tmp_path) -> None:
    store = SeriesStore(tmp_path / "store")
    files = write_phantom_series(tmp_path / "src", seed=942, n_slices=4, size=32)
    study, series, _ = _uids(files)
    _put(store, files[:2], tmp_path)
    series_dir = store.series_dir(study, series)
    kept = store.series_files(study, series)
    mark_announced(store, study, series, kept, "quiet", job_id="earlier-job")
    earlier = json.loads((series_dir / MARKER).read_text())
    before = {p.stem for p in kept}

    _mark(store, study, series, before | _uids(files)[2], "fetching by reference (C-MOVE)")
    _put(store, files, tmp_path)
    assert len(store.series_files(study, series)) == 4
    _undo(store, study, series, before, earlier)

    assert store.series_files(study, series) == kept
    now = json.loads((series_dir / MARKER).read_text())
    assert {k: now[k] for k in ("sop_instance_uids", "reason", "job_id")} == {
        k: earlier[k] for k in ("sop_instance_uids", "reason", "job_id")}
