"""A series pulled by C-MOVE to our own AE: our listener receives and stores the
instances, and the request makes the one job of them.

Two doors meet here: the listener's series completion would make a job of the series
once its association ends, and the request makes one when the C-MOVE's final response
says the instances are stored. So that there is exactly one, the request marks the
series announced (`.announced.json`, the record series completion consults, shared by
every replica) with the SOPInstanceUIDs the C-FIND listed *before* it asks for the move:
when the listener's completion comes to the series it finds nothing new and makes no
job. After the move, the request makes the job and marks the series announced into it.

A failure undoes everything: the instances this move added are removed, and the series'
earlier record (or none) is put back, so the store is as it was. A listener that stores
an instance the C-FIND did not list (a new one meanwhile) announces it as a late
instance, in a job that supersedes this one, as for any series.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from pathlib import Path

from dicom_synth.domain import Job
from dicom_synth.settings import Settings
from service.completion import MARKER, mark_announced, read_marker_record
from service.fetch_dimse import FetchError, Peer, move_series
from service.store import SeriesStore
from service.submit import check_fit, make_job, open_store

log = logging.getLogger(__name__)


def move_and_submit(settings: Settings, peer: Peer, study: str, series: str, expected: Collection[str], *,
                    task: str, source_contrast: str | None, origin: str) -> Job:
    """C-MOVE the series to SYNTH_AE_TITLE and make its job (`expected`: its SOPInstanceUIDs)."""
    store = open_store(settings)
    series_dir = store.series_dir(study, series)
    before = {p.stem for p in store.series_files(study, series)}
    earlier = read_marker_record(series_dir)
    series_dir.mkdir(parents=True, exist_ok=True)
    _mark(store, study, series, before | set(expected), "fetching by reference (C-MOVE)")
    try:
        move_series(peer, study, series, settings.ae_title)
        files = store.series_files(study, series)
        missing = set(expected) - {f.stem for f in files}
        if missing:
            raise FetchError(502, f"the PACS {peer.pacs} reported the C-MOVE done, but {len(missing)} of "
                                  f"{len(expected)} instances did not reach our listener {settings.ae_title}")
        check_fit(files, task, source_contrast)
        added = [f for f in files if f.stem not in before]
        return make_job(settings, store, study, series, files, added, task=task, source_contrast=source_contrast,
                        origin=origin, reason="by reference (C-MOVE)")
    except BaseException:
        _undo(store, study, series, before, earlier)
        raise


def _mark(store: SeriesStore, study: str, series: str, sop_uids: Collection[str], reason: str, **kw) -> None:
    series_dir = store.series_dir(study, series)
    mark_announced(store, study, series, [series_dir / f"{uid}.dcm" for uid in sop_uids], reason, **kw)


def _undo(store: SeriesStore, study: str, series: str, before: set[str], earlier: dict | None) -> None:
    """The store as it was before the move: its instances, and its announcement record."""
    series_dir = store.series_dir(study, series)
    for f in store.series_files(study, series):
        if f.stem not in before:
            f.unlink(missing_ok=True)
    if earlier is None:
        (series_dir / MARKER).unlink(missing_ok=True)
    else:
        _mark(store, study, series, earlier["sop_instance_uids"], str(earlier.get("reason") or ""),
              job_id=earlier.get("job_id"), supersedes=earlier.get("supersedes"))
    for d in (series_dir, series_dir.parent):
        _remove_if_empty(d)


def _remove_if_empty(d: Path) -> None:
    try:
        d.rmdir()
    except OSError:  # not empty (or gone): keep it
        pass
