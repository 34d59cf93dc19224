"""The Prometheus counters and histograms every process of the service updates: one place
for their names, labels and buckets. The gateway's `/metrics` (service.gateway.metrics)
adds the gauges it computes when scraped (jobs by state and task, queue depths, free disk).

Several processes (gateway, listener, workers) count, so under the runner each writes
its values to files in PROMETHEUS_MULTIPROC_DIR (prometheus-client's multiprocess mode,
set by service.runner for its children) and the gateway merges every `*.db` file under
`<data_dir>/metrics` when scraped; `%h` in it stands for the host name (each replica
of a scaled compose service, pid 1 in each, its own folder). A process without that
variable counts in memory (a test, one container on its own).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

METRICS_SUBDIR = "metrics"
"""Under the data directory: each process group's PROMETHEUS_MULTIPROC_DIR is a folder in it."""

_multiproc_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
if _multiproc_dir and "%h" in _multiproc_dir:  # one folder per container of a scaled compose service
    _multiproc_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"] = _multiproc_dir.replace("%h", socket.gethostname())
if _multiproc_dir:  # prometheus-client needs the folder before the first value is made
    Path(_multiproc_dir).mkdir(parents=True, exist_ok=True)

from prometheus_client import Counter, Histogram  # noqa: E402  (after the folder exists)

NAMESPACE = "synth"

ASSOCIATIONS = Counter(
    "associations", "DICOM associations by outcome (accepted, rejected: refused at negotiation)",
    ["outcome"], namespace=NAMESPACE)
INSTANCES = Counter(
    "instances", "C-STORE requests answered by the listener, by DIMSE status (0x0000: stored)",
    ["status"], namespace=NAMESPACE)
JOBS_CREATED = Counter("jobs_created", "jobs created, by origin (dicom or http)", ["origin"], namespace=NAMESPACE)
STEP_SECONDS = Histogram(
    "job_step_seconds", "time a job spent in a state before it left it (the timeline's steps)", ["step"],
    namespace=NAMESPACE, buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600))
INFERENCE_SECONDS = Histogram(
    "model_inference_seconds", "one model run over a whole series (all its batches)", ["model"],
    namespace=NAMESPACE, buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300))
EXPORT_ATTEMPTS = Counter("export_attempts", "associations opened to send results to the PACS",
                          namespace=NAMESPACE)
EXPORT_FAILURES = Counter("export_failures", "exports that gave up (every retry failed, or a permanent refusal)",
                          namespace=NAMESPACE)


def status_label(status: int) -> str:
    """A DIMSE status as its label value: 0x0000, 0xA700, ..."""
    return f"0x{int(status):04X}"


def multiprocess_dir() -> Path | None:
    """This process's PROMETHEUS_MULTIPROC_DIR (None: it counts in memory)."""
    return Path(_multiproc_dir) if _multiproc_dir else None
