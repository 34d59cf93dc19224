"""One typed settings object. Environment variables with prefix SYNTH_, optionally a
config file named by SYNTH_CONFIG (KEY=VALUE lines, dotenv syntax)."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from dicom_synth.domain import PacsAddress


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
    pacs: Annotated[PacsAddress | None, NoDecode] = Field(
        None, description="where results go: AE@host:port; unset = keep locally"
    )
    allowed_calling_aets: Annotated[list[str] | None, NoDecode] = Field(
        None, description="comma-separated calling AE titles allowed to store; unset = any"
    )
    series_quiet_seconds: float = Field(2.0, gt=0, le=3600, description="silence that completes a series")
    series_grace_seconds: float = Field(
        0.3, ge=0, le=60, description="wait after the association ends when headers show the series whole"
    )
    export_retries: int = Field(5, ge=0, le=100, description="C-STORE attempts after the first")
    export_backoff_seconds: float = Field(1.0, ge=0, description="first backoff; doubles per retry")
    models_dir: Path | None = Field(None, description="where ONNX models and cards live; unset = built-in")
    domain_guard: Literal["refuse", "warn", "off"] = Field(
        "refuse", description="a series outside its model's training domain: refuse (skip the job), "
        "warn (synthesize, say so in ImageComments and the job) or off (no check)"
    )

    @field_validator("pacs", mode="before")
    @classmethod
    def _parse_pacs(cls, v: object) -> object:
        if v is None or isinstance(v, PacsAddress):
            return v
        text = str(v).strip()
        if not text:
            return None
        return PacsAddress.parse(text)

    @field_validator("allowed_calling_aets", mode="before")
    @classmethod
    def _parse_aets(cls, v: object) -> object:
        if isinstance(v, str):
            items = [s.strip() for s in v.split(",") if s.strip()]
            return items or None
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
