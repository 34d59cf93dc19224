"""What GET /metrics shows: the counters and histograms of every process (dicom_synth.metrics;
prometheus-client multiprocess files under <data_dir>/metrics when the runner or compose
set PROMETHEUS_MULTIPROC_DIR, else this process's own), and gauges computed now: jobs by
state and task (the job store), queue depths (the broker) and free disk (the data
directory). A gauge whose source is down is left out and `synth_scrape_ok{source}` is 0."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

from dicom_synth import metrics
from dicom_synth.jobstore import JobStore
from dicom_synth.queueconf import QUEUE_DEFAULT, QUEUE_EXPORT, QUEUE_GPU
from dicom_synth.settings import Settings

log = logging.getLogger(__name__)

QUEUES = (QUEUE_DEFAULT, QUEUE_GPU, QUEUE_EXPORT)


def metric_files(settings: Settings) -> list[Path]:
    """Every process's multiprocess file: under <data_dir>/metrics (one folder per process
    group, e.g. the runner's children, or one per compose service) and our own folder."""
    roots = {(settings.data_dir / metrics.METRICS_SUBDIR).resolve()}
    own = metrics.multiprocess_dir()
    if own is not None:
        roots.add(own.resolve())
    files = {f for root in roots if root.is_dir() for f in root.rglob("*.db")}
    return sorted(str(f) for f in files)


class _MultiProcessFiles:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def collect(self) -> Iterator[Metric]:
        return iter(MultiProcessCollector.merge(metric_files(self.settings), accumulate=True))


def queue_depths() -> dict[str, int]:
    """Messages waiting in each Celery queue (the broker, now)."""
    from kombu.exceptions import ChannelError

    from service.queue import app as celery_app

    depths = {}
    with celery_app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=2)
        channel = conn.default_channel
        for queue in QUEUES:
            try:
                depths[queue] = int(channel.queue_declare(queue=queue, passive=True).message_count)
            except ChannelError:  # never declared, or empty (Redis keeps no empty list)
                depths[queue] = 0
    return depths


class ServiceGauges:
    """Gauges computed at scrape time, in the gateway."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def collect(self) -> Iterator[Metric]:
        ok = GaugeMetricFamily("synth_scrape_ok", "1 when this source answered the scrape", labels=["source"])
        try:
            counts = JobStore(self.settings.jobs_db_url).counts()
            jobs = GaugeMetricFamily("synth_jobs", "jobs in the job store, by state and task",
                                     labels=["state", "task"])
            for (state, task), n in sorted(counts.items()):
                jobs.add_metric([state, task], n)
            yield jobs
            ok.add_metric(["database"], 1)
        except Exception as exc:
            log.warning("metrics: the job store did not answer: %s", exc)
            ok.add_metric(["database"], 0)
        try:
            depths = queue_depths()
            queue = GaugeMetricFamily("synth_queue_depth", "messages waiting in each queue", labels=["queue"])
            for name, n in depths.items():
                queue.add_metric([name], n)
            yield queue
            ok.add_metric(["broker"], 1)
        except Exception as exc:
            log.warning("metrics: the broker did not answer: %s", exc)
            ok.add_metric(["broker"], 0)
        try:
            st = os.statvfs(self.settings.data_dir)
            yield GaugeMetricFamily("synth_disk_free_bytes", "free space in the data directory (store, jobs)",
                                    value=st.f_bavail * st.f_frsize)
            ok.add_metric(["disk"], 1)
        except OSError as exc:
            log.warning("metrics: cannot stat the data directory: %s", exc)
            ok.add_metric(["disk"], 0)
        yield ok


def exposition(settings: Settings) -> bytes:
    """The Prometheus text format of everything above."""
    registry = CollectorRegistry()
    if metrics.multiprocess_dir() is None:  # a gateway on its own: its values are in memory
        registry.register(_Registered())
    else:
        registry.register(_MultiProcessFiles(settings))
    registry.register(ServiceGauges(settings))
    return generate_latest(registry)


class _Registered:
    def collect(self) -> Iterator[Metric]:
        return REGISTRY.collect()
