"""One typed settings object. Environment variables with prefix SYNTH_, optionally a
config file named by SYNTH_CONFIG (KEY=VALUE lines, dotenv syntax)."""

from __future__ import annotations

import os
import re
import socket
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from dicom_synth.callers import AllowedCaller
from dicom_synth.domain import DicomWebAddress, PacsAddress, parse_pacs


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SYNTH_",
        extra="ignore",
    )

    ae_title: str = Field("SYNTH", min_length=1, max_length=16, description="our AE title")
    dicom_port: int = Field(11112, ge=1, le=65535, description="listener port")
    http_port: int = Field(8000, ge=1, le=65535, description="gateway port")
    http_host: str = Field("0.0.0.0", description="gateway bind address")
    dicom_host: str = Field("0.0.0.0", description="listener bind address")
    data_dir: Path = Field(Path("./var"), description="series store, job records, outputs")
    broker_url: str | None = Field(None, description="e.g. redis://localhost:6379/0; unset = embedded")
    database_url: str | None = Field(
        None, description="job store, an SQLAlchemy URL (postgresql+psycopg://user@host/db in production); "
        "unset = SQLite at <data_dir>/jobs.sqlite3"
    )
    pacs: Annotated[PacsAddress | DicomWebAddress | None, NoDecode] = Field(
        None, description="where results go: AE@host:port (C-STORE) or dicomweb+http://host:port/path "
        "(STOW-RS); unset = keep locally"
    )
    allowed_calling_aets: Annotated[list[str] | None, NoDecode] = Field(
        None, description="comma-separated calling AE titles allowed to store, each AE (any address) or "
        "AE@host-or-cidr; unset = any"
    )
    # HTTP authentication (issue 17): see service/gateway/auth.py.
    auth: Literal["on", "off"] = Field("on", description="off: the gateway asks no token (a closed network only)")
    api_token: SecretStr | None = Field(
        None, description="the admin bearer token; unset with no tokens file: `make run` generates one"
    )
    api_tokens_file: Path | None = Field(
        None, description="bearer tokens, hashed, with their scopes (lines: name sha256:<hex> scope,scope)"
    )
    oidc_issuer: str | None = Field(
        None, description="OpenID Connect issuer URL: its JWTs are accepted too (signature checked against its JWKS)"
    )
    oidc_audience: str | None = Field(None, description="the `aud` a JWT must carry; unset = not checked")
    oidc_jwks_url: str | None = Field(None, description="the issuer's JWKS; unset = from its discovery document")
    oidc_scopes_claim: str = Field(
        "scope", description="the claim with the scopes (space-separated or a list; dotted path for nested)"
    )
    metrics_public: bool = Field(
        False, description="true: GET /metrics answers without a token (a Prometheus on a trusted network)"
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="comma-separated origins (scheme://host:port) whose pages may call the "
        "API with a bearer token, e.g. an OHIF viewer served elsewhere; unset = none (same origin only)"
    )
    viewer_dir: Path | None = Field(
        None, description="where the OHIF viewer is fetched to (python -m service.viewer.fetch) and served "
        "from at /viewer/; unset = <data_dir>/viewer"
    )
    # TLS (issue 17): see service/tls.py. Certificates and keys are PEM files.
    http_tls_certificate: Path | None = Field(None, description="gateway HTTPS certificate (chain); unset = HTTP")
    http_tls_private_key: Path | None = Field(None, description="gateway HTTPS private key")
    dicom_tls_port: int | None = Field(
        None, ge=0, le=65535, description="DICOM TLS listener port (PS3.15 B.9/B.11 profile, TLS 1.2+), "
        "beside the plain SYNTH_DICOM_PORT; unset = no TLS port"
    )
    dicom_plain: Literal["on", "off"] = Field(
        "on", description="off: no plain DICOM port, only SYNTH_DICOM_TLS_PORT"
    )
    dicom_tls_certificate: Path | None = Field(None, description="the DICOM TLS listener's certificate")
    dicom_tls_private_key: Path | None = Field(None, description="the DICOM TLS listener's private key")
    dicom_tls_ca_certificates: Path | None = Field(
        None, description="CAs of client certificates: set = every TLS peer must show one they signed"
    )
    pacs_tls: Literal["on", "off"] = Field("off", description="on: the exporter talks TLS to SYNTH_PACS")
    pacs_tls_ca_certificates: Path | None = Field(
        None, description="CAs that sign the PACS's certificate; unset = the system's trust store"
    )
    pacs_tls_certificate: Path | None = Field(None, description="our client certificate for the PACS; optional")
    pacs_tls_private_key: Path | None = Field(None, description="our client certificate's private key")
    pacs_tls_server_name: str | None = Field(
        None, description="the name the PACS's certificate must carry; unset = SYNTH_PACS's host"
    )
    # Retention and disk safety (issue 17): see service/retention.py and dicom_synth/diskspace.py.
    retention_days: float = Field(
        7.0, ge=0, description="inputs and outputs are purged this long after their job ends; 0 keeps them"
    )
    retention_check_seconds: float = Field(3600.0, gt=0, description="how often the gateway purges")
    min_free_gb: float = Field(
        1.0, ge=0, description="below this free on the data disk the listener answers 0xA700 and the "
        "gateway 507; 0 = no watermark"
    )
    series_quiet_seconds: float = Field(
        30.0, gt=0, le=3600, description="silence that completes a series whose headers do not show it whole"
    )
    series_grace_seconds: float = Field(
        0.3, ge=0, le=60, description="wait after the association ends when headers show the series whole"
    )
    export_retries: int = Field(5, ge=0, le=100, description="C-STORE attempts after the first")
    export_backoff_seconds: float = Field(1.0, ge=0, description="first backoff; doubles per retry")
    # Inference by reference (issue 18): POST /synthesize with a JSON body; see service/fetch.py.
    pacs_retrieve: Literal["move", "get"] = Field(
        "move", description="how a series named by reference is pulled from a DIMSE SYNTH_PACS: move (C-MOVE "
        "to SYNTH_AE_TITLE, our listener, which the PACS must know; C-GET when the PACS refuses the move "
        "before anything moved) or get (C-GET, the instances on our own association)"
    )
    pacs_fetch_timeout_seconds: float = Field(
        300.0, gt=0, le=3600, description="longest a request by reference waits for the PACS (query and "
        "retrieval together); past it 504, and nothing is kept"
    )
    models_dir: Path | None = Field(None, description="where ONNX models and cards live; unset = built-in")
    domain_guard: Literal["refuse", "warn", "off"] = Field(
        "refuse", description="a series outside its model's training domain: refuse (skip the job), "
        "warn (synthesize, say so in ImageComments and the job) or off (no check)"
    )
    # Limits on what a peer may make us hold (issue 15): each refusal names its limit.
    max_upload_bytes: int = Field(
        1 << 30, ge=1 << 20, description="largest HTTP upload, and largest a zip may expand to (413)"
    )
    max_series_instances: int = Field(
        10_000, ge=1, description="instances per series, and entries per zip (HTTP 413, DICOM 0xA700)"
    )
    max_instance_pixels: int = Field(
        1 << 27, ge=1, description="rows x columns x frames x samples of one instance, from its header "
        "before any pixel is decoded (HTTP 413, DICOM 0xA700)"
    )
    dicom_max_associations: int = Field(32, ge=1, le=1000, description="listener associations at once")
    dicom_max_associations_per_peer: int = Field(
        8, ge=1, le=1000, description="listener associations (and pending connections) per peer address"
    )
    dicom_acse_timeout: float = Field(
        30.0, gt=0, le=600, description="ARTIM: seconds from connect to a whole A-ASSOCIATE-RQ"
    )
    dicom_idle_timeout: float = Field(
        60.0, gt=0, le=3600, description="an association with no PDU for this long is aborted"
    )
    task_max_attempts: int = Field(
        2, ge=1, le=100, description="starts of one step for one job before it is failed as poison "
        "(a start that never finished killed its worker)"
    )
    restart_backoff_seconds: float = Field(
        0.5, ge=0, le=60, description="runner: first delay before restarting a dead child; doubles per death"
    )
    restart_backoff_max_seconds: float = Field(
        30.0, ge=0, le=3600, description="runner: the longest delay between restarts of one child"
    )
    onnx_threads: int | None = Field(
        None, ge=1, le=256, description="a synthesis worker's ONNX Runtime intra-op threads; unset = one per "
        "core (set it when several worker processes share a machine's cores)",
    )
    node_name: str = Field(
        default_factory=socket.gethostname, min_length=1, pattern=r"^[A-Za-z0-9._-]+$",
        description="this node's name: the runner's workers are `<kind>@<node_name>` and it resumes at "
        "start only the jobs they claimed; default the host name (Celery's %h)",
    )
    outbox_relay_seconds: float = Field(
        2.0, gt=0, le=3600, description="runner: how often job messages not confirmed sent (broker down, "
        "a writer that died) are sent by the outbox relay, and a broker restart is looked for"
    )
    stuck_check_seconds: float = Field(
        60.0, gt=0, le=86400, description="runner: how often jobs stuck past their step's deadline are requeued"
    )
    classify_deadline_seconds: float = Field(
        600.0, gt=0, description="a job received or classified with no change for this long is stuck"
    )
    synthesize_deadline_seconds: float = Field(
        3600.0, gt=0, description="a job queued or running with no change (progress) for this long is stuck"
    )
    export_deadline_seconds: float = Field(
        1800.0, gt=0, description="a job exporting with no change for this long is stuck (above the retries' time)"
    )

    def step_deadlines(self) -> dict[str, float]:
        """Task name → seconds without a change after which a job in that step is stuck."""
        from dicom_synth.queueconf import TASK_CLASSIFY, TASK_EXPORT, TASK_SYNTHESIZE

        return {TASK_CLASSIFY: self.classify_deadline_seconds, TASK_SYNTHESIZE: self.synthesize_deadline_seconds,
                TASK_EXPORT: self.export_deadline_seconds}

    @field_validator("pacs", mode="before")
    @classmethod
    def _parse_pacs(cls, v: object) -> object:
        if v is None or isinstance(v, (PacsAddress, DicomWebAddress)):
            return v
        text = str(v).strip()
        if not text:
            return None
        return parse_pacs(text)

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            backend = make_url(v.strip()).get_backend_name()
        except ArgumentError as exc:
            raise ValueError(f"not an SQLAlchemy URL: {exc}") from None
        if backend not in ("sqlite", "postgresql"):
            raise ValueError(f"job store backend {backend!r}: expected sqlite:/// or postgresql+psycopg://")
        return v.strip()

    @field_validator("allowed_calling_aets", mode="before")
    @classmethod
    def _parse_aets(cls, v: object) -> object:
        if isinstance(v, str):
            v = [s.strip() for s in v.split(",") if s.strip()] or None
        for entry in v if isinstance(v, list) else []:
            AllowedCaller.parse(str(entry))  # AE or AE@host-or-cidr; a typo stops the start
        return v

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _parse_origins(cls, v: object) -> object:
        if isinstance(v, str):
            v = [o.strip().rstrip("/") for o in v.split(",") if o.strip()]
        for origin in v if isinstance(v, list) else []:
            if origin != "*" and not re.fullmatch(r"https?://[^/\s]+", str(origin)):
                raise ValueError(f"CORS origin {origin!r}: expected scheme://host[:port] (no path) or *")
        return v

    @field_validator("ae_title")
    @classmethod
    def _check_ae(cls, v: str) -> str:
        v = v.strip()
        if not v or "\\" in v or not v.isprintable():
            raise ValueError("AE title must be 1-16 printable characters without backslash")
        return v

    @property
    def store_dir(self) -> Path:
        return self.data_dir / "store"

    @property
    def jobs_dir(self) -> Path:
        return self.data_dir / "jobs"

    @property
    def db_path(self) -> Path:
        return self.data_dir / "jobs.sqlite3"

    @property
    def viewer_root(self) -> Path:
        return self.viewer_dir or self.data_dir / "viewer"

    @property
    def jobs_db_url(self) -> str:
        """Where the job store is: SYNTH_DATABASE_URL, else the SQLite file in the data dir."""
        return self.database_url or f"sqlite:///{self.db_path}"


@lru_cache
def get_settings() -> Settings:
    """Cached settings; tests call `get_settings.cache_clear()` after changing the env."""
    return Settings(_env_file=os.environ.get("SYNTH_CONFIG"))  # type: ignore[call-arg]


def job_dir(settings: Settings, job_id: str) -> Path:
    return settings.jobs_dir / job_id


def job_input_dir(settings: Settings, job_id: str) -> Path:
    """A snapshot of the source series as it was when the job was made (hard links)."""
    return job_dir(settings, job_id) / "input"


def job_output_dir(settings: Settings, job_id: str) -> Path:
    """The synthesized DICOM files, one sub-folder per output series."""
    return job_dir(settings, job_id) / "output"
