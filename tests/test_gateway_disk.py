"""A full disk under the data directory: the upload answers 507 with the reason and
leaves nothing behind (no partial series, no job). The gateway runs in-process on a
real 512 KiB tmpfs."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from dicom_synth.jobstore import JobStore
from dicom_synth.settings import Settings, get_settings
from models.dce.phantom_dicom import write_phantom_series
from service.gateway.main import create_app
from tests.peers import mounted_tmpfs


@pytest.fixture
def tiny_data_dir(tmp_path: Path):
    with mounted_tmpfs(tmp_path / "tiny", "512k") as mnt:
        yield mnt


def test_full_disk_answers_507_and_stores_nothing(tmp_path, tiny_data_dir):
    settings = Settings(data_dir=tiny_data_dir, broker_url="redis://127.0.0.1:1/0", auth="off",
                        min_free_gb=0)  # ENOSPC itself, no watermark (tests/test_retention.py)
    app = create_app()
    app.dependency_overrides[get_settings] = lambda: settings
    JobStore(settings.db_path)  # the job database exists before the disk fills
    files = write_phantom_series(tmp_path / "t1", seed=971, n_slices=8, size=256)  # 8 x 128 KiB
    with TestClient(app) as client:
        r = client.post("/synthesize", files=[("files", (f.name, f.read_bytes(), "application/dicom")) for f in files])
    assert r.status_code == 507, r.text
    assert "No space left" in r.json()["detail"] or "space" in r.json()["detail"].lower()
    assert not list((tiny_data_dir / "store").rglob("*.dcm"))
    assert not list((tiny_data_dir / "incoming").rglob("*"))
    assert JobStore(settings.db_path).recent() == []
