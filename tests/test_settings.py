import pytest
from pydantic import ValidationError

from dicom_synth.domain import PacsAddress
from dicom_synth.settings import Settings, get_settings


def test_defaults_match_the_contract(monkeypatch):
    for key in list(__import__("os").environ):
        if key.startswith("SYNTH_"):
            monkeypatch.delenv(key)
    s = Settings()
    assert (s.ae_title, s.dicom_port, s.http_port) == ("SYNTH", 11112, 8000)
    assert str(s.data_dir) == "var" and s.broker_url is None and s.pacs is None
    assert s.series_quiet_seconds == 30.0
    assert s.database_url is None and s.jobs_db_url == "sqlite:///var/jobs.sqlite3"  # the file of old releases


def test_the_job_store_url(monkeypatch):
    monkeypatch.setenv("SYNTH_DATABASE_URL", "postgresql+psycopg://synth@db.local/synth")
    assert Settings().jobs_db_url == "postgresql+psycopg://synth@db.local/synth"
    for bad, message in [("not a url", "not an SQLAlchemy URL"), ("mysql://x@y/z", "expected sqlite")]:
        monkeypatch.setenv("SYNTH_DATABASE_URL", bad)
        with pytest.raises(ValidationError, match=message):
            Settings()


def test_environment_is_parsed(monkeypatch):
    monkeypatch.setenv("SYNTH_PACS", "ORTHANC@pacs.local:4242")
    monkeypatch.setenv("SYNTH_ALLOWED_CALLING_AETS", "ORTHANC, MODALITY1")
    monkeypatch.setenv("SYNTH_DICOM_PORT", "10400")
    s = Settings()
    assert s.pacs == PacsAddress("ORTHANC", "pacs.local", 4242)
    assert s.allowed_calling_aets == ["ORTHANC", "MODALITY1"]
    assert s.dicom_port == 10400


@pytest.mark.parametrize(
    "name,value,message",
    [
        ("SYNTH_PACS", "pacs.local:4242", "AE@host:port"),
        ("SYNTH_PACS", "ORTHANC@pacs.local:99999", "out of range"),
        ("SYNTH_AE_TITLE", "THIS_AE_TITLE_IS_TOO_LONG", "16"),
        ("SYNTH_DICOM_PORT", "0", "greater than or equal to 1"),
        ("SYNTH_SERIES_QUIET_SECONDS", "-1", "greater than 0"),
    ],
)
def test_bad_settings_fail_at_start_with_a_clear_message(monkeypatch, name, value, message):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as err:
        Settings()
    assert message in str(err.value)


def test_config_file(monkeypatch, tmp_path):
    cfg = tmp_path / "synth.env"
    cfg.write_text("SYNTH_AE_TITLE=MYSYNTH\nSYNTH_HTTP_PORT=8111\n")
    monkeypatch.setenv("SYNTH_CONFIG", str(cfg))
    monkeypatch.setenv("SYNTH_HTTP_PORT", "8222")  # the environment wins over the file
    get_settings.cache_clear()
    try:
        s = get_settings()
        assert s.ae_title == "MYSYNTH" and s.http_port == 8222
    finally:
        get_settings.cache_clear()
