"""Least exposure on disk (issue 17): whatever a service process creates is its user's
alone — files 0600, directories 0700 — through a process-wide umask set once at each
process start (runner, gateway, listener, Celery workers), and the data directory
itself made 0700 so what an older version left readable is closed too."""

from __future__ import annotations

import os
from pathlib import Path

PRIVATE_UMASK = 0o077
FILE_MODE = 0o600
DIR_MODE = 0o700


def keep_files_private(data_dir: Path | None = None) -> None:
    os.umask(PRIVATE_UMASK)
    if data_dir is not None:
        data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(data_dir, DIR_MODE)
