"""STOW-RS (PS3.18 10.5): store the parts of a request and answer for each.

Each part is checked as an HTTP upload's file is (`service.uploads`: supported SOP class
and transfer syntax, pixel limit, whole data set) and, under `/studies/{study}`, must
belong to that study; the good ones go into the series store (`SeriesStore.put`, the
listener's store) and into the listener's series completion (the shared Redis state,
as if the request were one association that has ended), so a request that holds a whole
series makes its job at once, and one that holds part of a series is completed as a
DIMSE sender's would be.

Status: 200 all stored, 202 some failed, 409 none stored for a reason of the data (SOP
class, study mismatch, transfer syntax, size, damage), 400 none stored because no part
was DICOM at all. Failure reasons are PS3.4's C-STORE statuses (below); the reason in
words goes in a `Warning: 299` header per failed part (PS3.18 8.3.5).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import redis
from pydicom.dataset import Dataset

from dicom_synth.limits import Limits, OverLimit
from dicom_synth.settings import Settings
from service.completion import CompletedSeries, CompletionTracker
from service.dicomweb.multipart import Part
from service.intake import accept_series, resend_makes_new_job
from service.store import InvalidInstance, SeriesStore, StoredInstance
from service.uploads import _inspect as inspect_upload_file

log = logging.getLogger(__name__)

PROCESSING_FAILURE = 0x0110
SOP_CLASS_NOT_SUPPORTED = 0x0122
OUT_OF_RESOURCES = 0xA700
DOES_NOT_MATCH = 0xA900  # the data set is not what the request says (another study)
CANNOT_UNDERSTAND = 0xC000
TRANSFER_SYNTAX_NOT_SUPPORTED = 0xC122
_REASON_OF_KIND = {"not DICOM": CANNOT_UNDERSTAND, "damaged": CANNOT_UNDERSTAND,
                   "class": SOP_CLASS_NOT_SUPPORTED, "syntax": TRANSFER_SYNTAX_NOT_SUPPORTED,
                   "too large": OUT_OF_RESOURCES}
ORIGIN = "dicomweb"
"""The calling AE recorded for STOW-RS arrivals in the completion state, and the jobs' origin."""


class CompletionUnavailable(Exception):
    """The instances are stored but Redis (the completion state) could not be reached: 503."""


@dataclass
class Failure:
    reason: int
    detail: str
    sop_class_uid: str = ""
    sop_instance_uid: str = ""


@dataclass
class StowOutcome:
    stored: list[StoredInstance] = field(default_factory=list)
    failed: list[Failure] = field(default_factory=list)
    jobs: list[str] = field(default_factory=list)

    @property
    def status_code(self) -> int:
        if not self.failed:
            return 200
        if self.stored:
            return 202
        return 400 if all(f.reason == CANNOT_UNDERSTAND and not f.sop_instance_uid for f in self.failed) else 409


def _uids(path: Path) -> tuple[str, str, str]:
    """(SOPClassUID, SOPInstanceUID, StudyInstanceUID) of a part, as far as they can be read."""
    from dicom_synth.series import read_header

    try:
        header = read_header(path)
        return tuple(str(header.get(k, "") or "").strip()  # type: ignore[return-value]
                     for k in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID"))
    except Exception:
        return "", "", ""


def store_parts(settings: Settings, parts: list[Part], study: str | None) -> StowOutcome:
    """Check and store every part; hand the stored series to series completion."""
    limits = Limits.from_settings(settings)
    store = SeriesStore(settings.store_dir, max_instance_pixels=settings.max_instance_pixels,
                        max_series_instances=settings.max_series_instances)
    outcome = StowOutcome()
    for part in parts:
        sop_class, sop_uid, part_study = _uids(part.path)
        media = part.content_type.split(";")[0].strip().lower()
        if media not in ("", "application/dicom"):
            outcome.failed.append(Failure(CANNOT_UNDERSTAND, f"part of type {media!r}, not application/dicom",
                                          sop_class, sop_uid))
            continue
        kind, detail, _ = inspect_upload_file(part.path, limits)
        if kind:
            outcome.failed.append(Failure(_REASON_OF_KIND[kind], f"{kind}: {detail}" if detail else kind,
                                          sop_class, sop_uid))
            continue
        if study and part_study != study:
            outcome.failed.append(Failure(DOES_NOT_MATCH, f"instance of study {part_study}, not {study}",
                                          sop_class, sop_uid))
            continue
        try:
            outcome.stored.append(store.put(part.path))
        except OverLimit as exc:
            outcome.failed.append(Failure(OUT_OF_RESOURCES, str(exc), sop_class, sop_uid))
        except InvalidInstance as exc:
            outcome.failed.append(Failure(CANNOT_UNDERSTAND, str(exc), sop_class, sop_uid))
        except OSError as exc:
            log.warning("STOW-RS: cannot store %s: %s", sop_uid, exc)
            outcome.failed.append(Failure(OUT_OF_RESOURCES, f"cannot store: {exc.strerror or exc}",
                                          sop_class, sop_uid))
    if outcome.stored:
        try:
            outcome.jobs = _complete(settings, store, outcome.stored, doubtful=bool(outcome.failed))
        except redis.RedisError as exc:
            # Stored but not in the completion state: the client's retry (same instances) puts them there.
            raise CompletionUnavailable(f"series completion state unreachable ({exc}); send again") from exc
    return outcome


def _on_complete(settings: Settings):
    def on_complete(series: CompletedSeries) -> str:
        origin = ORIGIN if series.calling_ae == ORIGIN else f"dicom:{series.calling_ae}"
        return accept_series(settings, study_instance_uid=series.study_instance_uid,
                             series_instance_uid=series.series_instance_uid, files=series.files,
                             origin=origin, supersedes=series.supersedes).job_id
    return on_complete


def _complete(settings: Settings, store: SeriesStore, stored: list[StoredInstance], *,
                     doubtful: bool) -> list[str]:
    """The request is one association of the shared completion: it has ended when this
    runs, so a series its headers show whole is announced now (no grace: nothing else
    of it is on the way), and any other is left to the listener's quiet timeout."""
    from service.completion_state import SharedCompletionState, redis_client

    if not settings.broker_url:  # `make run` and compose always set it for the gateway
        raise RuntimeError("STOW-RS needs SYNTH_BROKER_URL: the series completion state is in its Redis")
    made: list[str] = []
    base = _on_complete(settings)

    def on_complete(series: CompletedSeries) -> str:
        job = base(series)
        made.append(job)
        return job

    tracker = CompletionTracker(store, on_complete, SharedCompletionState(redis_client(settings.broker_url)),
                                quiet_seconds=settings.series_quiet_seconds, grace_seconds=0.0,
                                rerun_last_job=lambda job_id: resend_makes_new_job(settings, job_id))
    request = f"stow-{uuid.uuid4().hex}"
    for inst in stored:
        tracker.instance_stored(inst, ORIGIN, request)
    if doubtful:
        tracker.instance_refused(request)
    tracker.association_ended(request)
    tracker.tick()
    return made


def response_body(outcome: StowOutcome, base_url: str) -> dict:
    """The DICOM JSON of the Store Instances Response Module (PS3.18 10.5.3)."""
    ds = Dataset()
    studies = {s.study_instance_uid for s in outcome.stored}
    if len(studies) == 1:
        ds.RetrieveURL = f"{base_url}/studies/{next(iter(studies))}"
    if outcome.stored:
        refs = []
        for s in outcome.stored:
            item = Dataset()
            item.ReferencedSOPClassUID = str(s.values.get("SOPClassUID") or "")
            item.ReferencedSOPInstanceUID = s.sop_instance_uid
            item.RetrieveURL = (f"{base_url}/studies/{s.study_instance_uid}/series/{s.series_instance_uid}"
                                f"/instances/{s.sop_instance_uid}")
            refs.append(item)
        ds.ReferencedSOPSequence = refs
    if outcome.failed:
        items = []
        for f in outcome.failed:
            item = Dataset()
            item.ReferencedSOPClassUID = f.sop_class_uid
            item.ReferencedSOPInstanceUID = f.sop_instance_uid
            item.FailureReason = f.reason
            items.append(item)
        ds.FailedSOPSequence = items
    return ds.to_json_dict()
