"""Deterministic UIDs for outputs: a job run twice writes the same UIDs (idempotent
tasks), two jobs never share one. Derived by hashing, under pydicom's UID root."""

from __future__ import annotations

from pydicom.uid import UID, generate_uid

_NAMESPACE = "dicom-synth/v1"


def derived_series_uid(job_id: str, output_index: int) -> UID:
    """SeriesInstanceUID of output number `output_index` of job `job_id`."""
    return generate_uid(entropy_srcs=[_NAMESPACE, "series", job_id, str(output_index)])


def derived_instance_uid(job_id: str, output_index: int, slice_index: int) -> UID:
    """SOPInstanceUID of slice `slice_index` of output `output_index` of job `job_id`."""
    return generate_uid(
        entropy_srcs=[_NAMESPACE, "instance", job_id, str(output_index), str(slice_index)]
    )
