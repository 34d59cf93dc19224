"""Plain domain types shared by service and worker. Field names follow DICOM keywords."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class JobStatus(StrEnum):
    """A job moves received → classified → queued → running → exporting → done,
    or ends failed (with the reason) or skipped (no route, with the reason)."""

    RECEIVED = "received"
    CLASSIFIED = "classified"
    QUEUED = "queued"
    RUNNING = "running"
    EXPORTING = "exporting"
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"

    @property
    def is_final(self) -> bool:
        return self in (JobStatus.DONE, JobStatus.FAILED, JobStatus.SKIPPED)


class Task(StrEnum):
    """Synthesis tasks; also the `task` field of a job and the model registry's keys."""

    DCE_PHASE1 = "dce_phase1"
    PSEUDO_MRI = "pseudo_mri"
    BRAIN_CONTRASTS = "brain_contrasts"


@dataclass(frozen=True)
class PacsAddress:
    """Where results go: `AE@host:port`."""

    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> PacsAddress:
        ae, sep, rest = text.partition("@")
        host, sep2, port = rest.rpartition(":")
        if not sep or not sep2 or not ae or not host or not port.isdigit():
            raise ValueError(f"expected AE@host:port, got {text!r}")
        if len(ae) > 16:
            raise ValueError(f"AE title {ae!r} is longer than 16 characters")
        port_n = int(port)
        if not 0 < port_n < 65536:
            raise ValueError(f"port {port_n} out of range 1..65535")
        return cls(ae_title=ae, host=host, port=port_n)

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


@dataclass(frozen=True)
class DicomWebAddress:
    """Where results go over DICOMweb: `dicomweb+http(s)://host:port/path` (the STOW-RS
    base; `url` is it without the `dicomweb+` prefix)."""

    url: str

    PREFIX = "dicomweb+"

    @classmethod
    def parse(cls, text: str) -> DicomWebAddress:
        from urllib.parse import urlsplit

        url = text.removeprefix(cls.PREFIX).rstrip("/")
        parts = urlsplit(url)
        if not text.startswith(cls.PREFIX) or parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected dicomweb+http://host:port/path, got {text!r}")
        if parts.username or parts.password:
            raise ValueError("put no credentials in SYNTH_PACS")
        return cls(url=url)

    @property
    def host(self) -> str:
        from urllib.parse import urlsplit

        return urlsplit(self.url).hostname or ""

    def __str__(self) -> str:
        return f"{self.PREFIX}{self.url}"


def parse_pacs(text: str) -> PacsAddress | DicomWebAddress:
    """SYNTH_PACS: `AE@host:port` (C-STORE) or `dicomweb+http://host:port/path` (STOW-RS)."""
    if text.startswith(DicomWebAddress.PREFIX):
        return DicomWebAddress.parse(text)
    return PacsAddress.parse(text)


@dataclass
class Job:
    """One job per complete source series. Persisted by `dicom_synth.jobstore`."""

    job_id: str
    status: JobStatus
    source_series_uid: str
    study_instance_uid: str
    origin: str  # "dicom:<calling AE>" or "http"
    requested_task: str = "auto"
    source_contrast: str | None = None  # what the user says a brain series is (t1, t2, t1c, flair)
    progress: float = 0.0
    series_class: str | None = None
    task: str | None = None
    output_series_uids: list[str] = field(default_factory=list)
    error: str | None = None
    evidence: dict | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    timeline: dict[str, float] = field(default_factory=dict)  # status -> when it was entered
    claimed_by: str | None = None  # Celery node that last started a task for this job
    supersedes: str | None = None  # the job made from fewer instances of the same series
    superseded_by: str | None = None  # the job made when later instances of the series came
    attempts: dict[str, int] = field(default_factory=dict)  # task name -> times started for this job
    purged: dict | None = None  # {"at": when, "reason": why}: its input and output files are deleted
    outbox: dict | None = None  # the message this job's state needs: {"task", "token", "due", "taken"} (jobstate)
    # What the operator searches the dashboard by (dicom_synth.jobsearch); not in public().
    accession_digest: str | None = None  # keyed digests, never the values (jobsearch.search_digest)
    patient_digest: str | None = None

    def public(self) -> dict:
        """The job as the HTTP contract shows it."""
        return {
            "job_id": self.job_id,
            "status": str(self.status),
            "progress": round(self.progress, 4),
            "series_class": self.series_class,
            "task": self.task,
            "source_series_uid": self.source_series_uid,
            "output_series_uids": list(self.output_series_uids),
            "error": self.error,
            "source_contrast": self.source_contrast,
            "evidence": self.evidence,
            "timeline": dict(self.timeline),
            "supersedes": self.supersedes,
            "superseded_by": self.superseded_by,
            "purged": dict(self.purged) if self.purged else None,
        }
