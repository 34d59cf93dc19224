"""Deterministic UIDs for outputs, derived by hashing under pydicom's UID root.

An output series is named by what it is made of, not by the job that made it: the source
series' SOP instances (and frames), the task, the target (output label) and the model's
sha256. The same series sent twice therefore yields the same UIDs and a PACS replaces the
instances instead of storing a second copy; a changed series or model yields new ones.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from pydicom.uid import UID, generate_uid

_NAMESPACE = "dicom-synth/v2"


def source_fingerprint(instances: Iterable[tuple[str, int | None]]) -> str:
    """sha256 (hex) of a source series' (SOPInstanceUID, frame number) pairs, order-free."""
    keys = sorted(f"{uid}/{'' if frame is None else int(frame)}" for uid, frame in instances)
    return hashlib.sha256("\n".join(keys).encode("ascii", "replace")).hexdigest()


def derived_series_uid(source: str, task: str, target: str, model_sha256: str) -> UID:
    """SeriesInstanceUID of the output `target` of `task`, by the model with `model_sha256`,
    from the source series with fingerprint `source` (see `source_fingerprint`)."""
    return generate_uid(entropy_srcs=[_NAMESPACE, "series", source, task, target.strip(),
                                      model_sha256.lower()])


def derived_instance_uid(series_uid: str, sop_instance_uid: str, frame: int | None) -> UID:
    """SOPInstanceUID of the output instance of series `series_uid` made from source
    instance `sop_instance_uid` (frame `frame` of a multi-frame source, else None)."""
    return generate_uid(entropy_srcs=[_NAMESPACE, "instance", str(series_uid), str(sop_instance_uid),
                                      "" if frame is None else str(int(frame))])


def derived_frame_of_reference_uid(source_series_uid: str) -> UID:
    """FrameOfReferenceUID for outputs of a source series that has none: one per source
    series, so every output made from it shares it."""
    return generate_uid(entropy_srcs=[_NAMESPACE, "frame-of-reference", str(source_series_uid)])
