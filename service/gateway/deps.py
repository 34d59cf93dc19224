"""Dependencies of the HTTP routes, as Annotated aliases (tests override get_settings)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from dicom_synth.jobstore import JobStore
from dicom_synth.settings import Settings, get_settings


def get_job_store(settings: Annotated[Settings, Depends(get_settings)]) -> JobStore:
    return JobStore(settings.jobs_db_url)


SettingsDep = Annotated[Settings, Depends(get_settings)]
JobStoreDep = Annotated[JobStore, Depends(get_job_store)]
