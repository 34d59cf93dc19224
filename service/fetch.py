"""Inference by reference: a series named by its UIDs is fetched from SYNTH_PACS and made
into the same job an upload of it would be (`service.submit`: same checks, store,
series completion record and job).

Synchronous, inside the request, bounded by SYNTH_PACS_FETCH_TIMEOUT_SECONDS: the client
learns at once that the PACS has no such series (404), cannot be reached or fails (502),
took too long (504), or that the series is past a limit (413), and nothing is kept in
any of those cases. First the PACS is asked what the series holds (C-FIND at IMAGE
level, or QIDO-RS), so an unknown or too large series is refused before any transfer;
then it is retrieved:
- DIMSE, SYNTH_PACS_RETRIEVE=move (default): C-MOVE to our own AE title, our listener
  storing the instances (`service.fetch_move`: one job, not two); a move the PACS refuses
  before anything moved (it does not know our AE) is followed by a C-GET;
- DIMSE, SYNTH_PACS_RETRIEVE=get: C-GET, the instances on our own association;
- DICOMweb (SYNTH_PACS=dicomweb+http://…): WADO-RS.
C-GET and WADO-RS instances are staged and checked as an upload's files are.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from dicom_synth.domain import DicomWebAddress, Job
from dicom_synth.limits import Limits, OverLimit, check_instance_pixels
from dicom_synth.settings import Settings
from service import fetch_dicomweb, fetch_dimse
from service.fetch_dimse import FetchError, MoveRefused
from service.fetch_move import move_and_submit
from service.submit import refuse_when_full, submit_staged
from service.tls import pacs_client_context
from service.uploads import UploadError, check_staged, new_staging_dir

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SeriesRef:
    study_instance_uid: str
    series_instance_uid: str
    task: str = "auto"
    source_contrast: str | None = None


def fetch_and_submit(settings: Settings, ref: SeriesRef) -> Job:
    """Fetch the series from SYNTH_PACS and make its job; `FetchError`/`UploadError` otherwise."""
    pacs = settings.pacs
    if pacs is None:
        raise FetchError(409, "no PACS to fetch from: SYNTH_PACS is not set")
    refuse_when_full(settings, "series")
    deadline = time.monotonic() + settings.pacs_fetch_timeout_seconds
    limits = Limits.from_settings(settings)
    study, series = ref.study_instance_uid, ref.series_instance_uid
    if isinstance(pacs, DicomWebAddress):
        _check_listing(fetch_dicomweb.find_instances(pacs, study, series, deadline), ref, limits, str(pacs))
        return _staged(settings, ref, limits, f"pacs:{pacs.host}", "by reference (WADO-RS)",
                       lambda dest: fetch_dicomweb.retrieve_series(
                           pacs, study, series, dest, deadline, max_bytes=limits.max_upload_bytes,
                           max_instances=limits.max_series_instances))
    peer = fetch_dimse.Peer(pacs, settings.ae_title, deadline, pacs_client_context(settings))
    found = [{**fetch_dimse.limit_values(i), "SOPInstanceUID": str(i.get("SOPInstanceUID") or "").strip()}
             for i in fetch_dimse.find_instances(peer, study, series)]
    _check_listing(found, ref, limits, str(pacs))
    origin = f"pacs:{pacs.ae_title}"
    expected = {v["SOPInstanceUID"] for v in found}
    refused = None
    if settings.pacs_retrieve == "move" and "" not in expected:
        try:
            return move_and_submit(settings, peer, study, series, expected, task=ref.task,
                                   source_contrast=ref.source_contrast, origin=origin)
        except MoveRefused as exc:
            refused = exc.reason
            log.warning("%s: fetching series %s by C-GET instead", refused, series)
    elif settings.pacs_retrieve == "move":  # without every SOPInstanceUID the listener could make a second job
        log.warning("the PACS %s lists instances of series %s without SOPInstanceUID: C-GET instead", pacs, series)
    try:
        return _staged(settings, ref, limits, origin, "by reference (C-GET)",
                       lambda dest: fetch_dimse.get_series(peer, study, series, dest,
                                                           max_instances=limits.max_series_instances,
                                                           max_bytes=limits.max_upload_bytes))
    except FetchError as exc:
        if refused is not None:
            raise FetchError(exc.status_code, f"{exc.reason} (after the C-MOVE was refused: {refused})") from exc
        raise


def _check_listing(found: Sequence[Mapping], ref: SeriesRef, limits: Limits, pacs: str) -> None:
    """404 for a series the PACS does not have, 413 for one past the limits."""
    if not found:
        raise FetchError(404, f"the PACS {pacs} has no series {ref.series_instance_uid} "
                              f"in study {ref.study_instance_uid}")
    if len(found) > limits.max_series_instances:
        raise FetchError(413, f"the series holds {len(found)} instances, more than "
                              f"SYNTH_MAX_SERIES_INSTANCES={limits.max_series_instances}")
    try:
        for values in found:
            check_instance_pixels(values, limits.max_instance_pixels)
    except OverLimit as exc:
        raise FetchError(413, f"an instance of the series has {exc}") from exc


def _staged(settings: Settings, ref: SeriesRef, limits: Limits, origin: str, reason: str,
            retrieve: Callable[[Path], list[Path]]) -> Job:
    """Retrieve into a staging folder, check as an upload, store and make the job."""
    staging = new_staging_dir(settings.data_dir)
    try:
        try:
            files = retrieve(staging)
        except OSError as exc:
            raise FetchError(507, f"cannot stage the series: {exc.strerror or exc}") from exc
        if not files:
            raise FetchError(502, f"the PACS sent no instance of series {ref.series_instance_uid}")
        try:
            staged = check_staged([(p.name, p) for p in files], limits)
        except UploadError as exc:  # what the PACS holds is not a series we take: not a media type
            raise FetchError(422 if exc.status_code == 415 else exc.status_code,
                             f"the series from the PACS: {exc.reason}") from exc
        if (staged.study_instance_uid, staged.series_instance_uid) != (ref.study_instance_uid,
                                                                      ref.series_instance_uid):
            raise FetchError(502, f"the PACS sent series {staged.series_instance_uid} of study "
                                  f"{staged.study_instance_uid}, not the one asked for")
        return submit_staged(settings, staged, ref.task, ref.source_contrast, origin=origin, reason=reason)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
