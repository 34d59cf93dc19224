"""Process entry point of the DICOM listener: `python -m service.listener_main`."""

from __future__ import annotations

import logging

from dicom_synth.domain import Job
from dicom_synth.filemodes import keep_files_private
from dicom_synth.settings import get_settings
from service.completion import CompletedSeries
from service.intake import accept_series, resend_makes_new_job
from service.listener import serve_forever


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s listener %(levelname)s %(message)s")
    settings = get_settings()
    keep_files_private(settings.data_dir)

    def on_complete(series: CompletedSeries) -> Job:
        return accept_series(
            settings,
            study_instance_uid=series.study_instance_uid,
            series_instance_uid=series.series_instance_uid,
            files=series.files,
            origin=f"dicom:{series.calling_ae}",
            supersedes=series.supersedes,
        )

    serve_forever(settings, on_complete, lambda job_id: resend_makes_new_job(settings, job_id))


if __name__ == "__main__":
    main()
