"""Retention (SYNTH_RETENTION_DAYS): a job's input and output files are deleted that long
after it ended (done, failed or skipped), and its source series leaves the series store
once no job that still keeps its files was made from it. The job record stays, with
`purged` saying when and why, so GET /jobs/{id} tells what happened and
GET /jobs/{id}/result answers 410 Gone. 0 days keeps everything.

The gateway runs `purge_expired` once at start and then every SYNTH_RETENTION_CHECK_SECONDS
(`PurgeLoop`). Purging twice (two gateways) is harmless: a job is marked once, and files
already gone are skipped. Each purge is logged, and recorded in the audit trail (kind
`purge`, dicom_synth.audit), with job IDs and UIDs only, never PHI.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from dataclasses import dataclass, field

from dicom_synth.audit import AuditTrail
from dicom_synth.domain import Job
from dicom_synth.jobstate import mark_purged
from dicom_synth.jobstore import JobStore
from dicom_synth.settings import Settings, job_dir
from service.store import SeriesStore, is_valid_uid

log = logging.getLogger("service.retention")

DAY = 86400.0


@dataclass
class PurgeReport:
    jobs: list[str] = field(default_factory=list)
    series: list[str] = field(default_factory=list)


def _ended_at(job: Job) -> float:
    return job.timeline.get(str(job.status), job.updated_at)


def purge_expired(settings: Settings, now: float | None = None, store: JobStore | None = None) -> PurgeReport:
    """Purge every job that ended more than SYNTH_RETENTION_DAYS ago and is not purged yet."""
    report = PurgeReport()
    if settings.retention_days <= 0:
        return report
    now = time.time() if now is None else now
    cutoff = now - settings.retention_days * DAY
    store = store or JobStore(settings.jobs_db_url)
    reason = f"retention: files deleted {settings.retention_days:g} days after the job ended"
    audit = AuditTrail(settings.jobs_db_url)
    for job in store.ended_before(cutoff):
        if job.purged:  # marked, but a purge that died may have left files behind
            if job_dir(settings, job.job_id).exists():
                shutil.rmtree(job_dir(settings, job.job_id), ignore_errors=True)
            continue
        if _ended_at(job) >= cutoff:
            continue
        marked = mark_purged(store, job.job_id, reason, at=now, seen_updated_at=job.updated_at)
        if marked is None:  # moved on meanwhile (a resend), or marked by another gateway
            continue
        shutil.rmtree(job_dir(settings, job.job_id), ignore_errors=True)
        report.jobs.append(job.job_id)
        days = (now - _ended_at(job)) / DAY
        log.info("purged job %s (series %s, ended %.1f days ago)", job.job_id, job.source_series_uid, days)
        series_purged = _purge_source_series(settings, store, marked)
        if series_purged:
            report.series.append(job.source_series_uid)
        audit.record_quietly("purge", who="retention", action="delete job input and output", subject=job.job_id,
                             outcome="purged", detail={"series": job.source_series_uid, "study": job.study_instance_uid,
                                                       "outputs": list(job.output_series_uids),
                                                       "source_series_deleted": series_purged,
                                                       "ended_days_ago": round(days, 2)})
    return report


def _purge_source_series(settings: Settings, store: JobStore, job: Job) -> bool:
    """Delete the job's source series from the store once no job keeping its files needs it."""
    if not (is_valid_uid(job.study_instance_uid) and is_valid_uid(job.source_series_uid)):
        return False
    if any(not j.purged for j in store.of_source_series(job.source_series_uid)):
        return False
    folder = SeriesStore(settings.store_dir).series_dir(job.study_instance_uid, job.source_series_uid)
    if not folder.exists():
        return False
    shutil.rmtree(folder, ignore_errors=True)
    try:
        folder.parent.rmdir()  # the study folder, when that was its last series
    except OSError:
        pass
    log.info("purged series %s of study %s from the store", job.source_series_uid, job.study_instance_uid)
    return True


class PurgeLoop:
    """`purge_expired` now and then every `retention_check_seconds`, in a daemon thread."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.settings.retention_days <= 0:
            log.info("SYNTH_RETENTION_DAYS=0: files are kept")
            return
        self._thread = threading.Thread(target=self._run, name="retention", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                report = purge_expired(self.settings)
                if report.jobs:
                    log.info("retention: purged %d jobs, %d source series", len(report.jobs), len(report.series))
            except Exception:  # a failing job store is tried again next round
                log.exception("retention purge failed; trying again in %.0f s", self.settings.retention_check_seconds)
            if self._stop.wait(self.settings.retention_check_seconds):
                return

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
