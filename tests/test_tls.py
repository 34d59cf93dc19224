"""DICOM TLS (issue 17) over real loopback sockets: DCMTK storescu +tls stores into the
listener's TLS port, a plain association to that port fails, client certificates are
required when a CA is set, the plain port keeps serving beside it, and the exporter
delivers to a DICOM TLS Orthanc (which requires our client certificate)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from pynetdicom import AE

from dicom_synth.domain import PacsAddress
from dicom_synth.settings import Settings
from service.completion import CompletedSeries
from service.export import ExportError, send_files
from service.listener import Listener
from service.tls import TlsConfigError, dicom_server_context, pacs_client_context, uvicorn_tls_args
from tests.peers import PEER_ENV, require_binary
from tests.test_listener import make_series
from tests.tlscerts import TestCA

HOST = "127.0.0.1"
VERIFICATION = "1.2.840.10008.1.1"


@pytest.fixture
def pki(tmp_path: Path) -> TestCA:
    return TestCA(tmp_path / "pki")


@pytest.fixture
def tls_listener(tmp_path: Path, pki: TestCA):
    """Start a listener with plain and TLS ports; `client_ca=True` requires client certificates."""
    started: list[Listener] = []

    def start(*, client_ca: bool = False, **overrides) -> tuple[Listener, list[CompletedSeries]]:
        server = pki.issue("synth-listener")
        settings = Settings(data_dir=tmp_path / f"data{len(started)}").model_copy(update={
            "dicom_port": 0, "dicom_host": HOST, "dicom_tls_port": 0, "series_grace_seconds": 0.05,
            "dicom_tls_certificate": server.cert, "dicom_tls_private_key": server.key,
            "dicom_tls_ca_certificates": pki.cert if client_ca else None, **overrides})
        done: list[CompletedSeries] = []
        listener = Listener(settings, done.append)
        listener.start()
        started.append(listener)
        return listener, done

    yield start
    for listener in started:
        listener.stop()


def _storescu(port: int, files: list[Path], *tls_args: str) -> subprocess.CompletedProcess:
    cmd = [require_binary("storescu"), "-aet", "MODALITY", "-aec", "SYNTH", *tls_args, HOST, str(port),
           *map(str, files)]
    return subprocess.run(cmd, env=PEER_ENV, capture_output=True, text=True, timeout=120)


def _stored(listener: Listener, series_uid: str) -> list[Path]:
    return sorted(listener.store.root.glob(f"*/{series_uid}/*.dcm"))


def test_storescu_over_tls_stores_and_plain_to_the_tls_port_fails(tls_listener, pki, tmp_path):
    listener, done = tls_listener()
    assert listener.tls_port and listener.tls_port != listener.port
    series = generate_uid()
    files = make_series(tmp_path / "s", 4, series=series)
    client = pki.issue("modality", server=False)
    r = _storescu(listener.tls_port, files, "+tls", str(client.key), str(client.cert), "+cf", str(pki.cert))
    assert r.returncode == 0, r.stderr
    assert len(_stored(listener, series)) == 4
    deadline = time.monotonic() + 10
    while not done and time.monotonic() < deadline:
        time.sleep(0.05)
    assert done and done[0].series_instance_uid == series and len(done[0].files) == 4

    # A plain association to the TLS port: no handshake, nothing stored.
    other = generate_uid()
    plain = _storescu(listener.tls_port, make_series(tmp_path / "p", 1, series=other))
    assert plain.returncode != 0
    ae = AE(ae_title="PLAIN")
    ae.add_requested_context(VERIFICATION)
    ae.acse_timeout = ae.network_timeout = 5
    assoc = ae.associate(HOST, listener.tls_port, ae_title="SYNTH")
    assert not assoc.is_established
    assert _stored(listener, other) == []
    # The plain port still serves plain peers beside it.
    r = _storescu(listener.port, make_series(tmp_path / "q", 2, series=other))
    assert r.returncode == 0, r.stderr
    assert len(_stored(listener, other)) == 2


def test_client_certificate_required_when_a_ca_is_set(tls_listener, pki, tmp_path):
    listener, _ = tls_listener(client_ca=True)
    series = generate_uid()
    files = make_series(tmp_path / "s", 1, series=series)
    anonymous = _storescu(listener.tls_port, files, "+tla", "+cf", str(pki.cert))  # TLS, no certificate
    assert anonymous.returncode != 0
    stranger = TestCA(tmp_path / "other-pki").issue("intruder", server=False)  # signed by another CA
    r = _storescu(listener.tls_port, files, "+tls", str(stranger.key), str(stranger.cert), "+cf", str(pki.cert))
    assert r.returncode != 0
    assert _stored(listener, series) == []
    client = pki.issue("modality", server=False)
    r = _storescu(listener.tls_port, files, "+tls", str(client.key), str(client.cert), "+cf", str(pki.cert))
    assert r.returncode == 0, r.stderr
    assert len(_stored(listener, series)) == 1


def test_tls_only_listener_has_no_plain_port(tls_listener, tmp_path, pki):
    listener, _ = tls_listener(dicom_plain="off")
    assert listener._acceptor is None and listener.tls_port
    client = pki.issue("modality", server=False)
    series = generate_uid()
    r = _storescu(listener.tls_port, make_series(tmp_path / "s", 1, series=series),
                  "+tls", str(client.key), str(client.cert), "+cf", str(pki.cert))
    assert r.returncode == 0, r.stderr


def test_tls_settings_in_error_name_the_setting(tmp_path, pki):
    with pytest.raises(TlsConfigError, match="SYNTH_DICOM_TLS_CERTIFICATE"):
        dicom_server_context(Settings(data_dir=tmp_path, dicom_tls_port=0))
    with pytest.raises(TlsConfigError, match="SYNTH_HTTP_TLS_PRIVATE_KEY"):
        uvicorn_tls_args(Settings(data_dir=tmp_path, http_tls_certificate=pki.cert))
    server = pki.issue("gw")
    assert uvicorn_tls_args(Settings(data_dir=tmp_path, http_tls_certificate=server.cert,
                                     http_tls_private_key=server.key)) == [
        "--ssl-certfile", str(server.cert), "--ssl-keyfile", str(server.key)]
    assert pacs_client_context(Settings(data_dir=tmp_path, pacs="P@h:1")) is None  # SYNTH_PACS_TLS off
    ctx, name = pacs_client_context(Settings(data_dir=tmp_path, pacs="P@pacs.example:2762", pacs_tls="on",
                                             pacs_tls_ca_certificates=pki.cert))
    assert name == "pacs.example" and ctx.check_hostname


@pytest.fixture
def tls_orthanc(orthanc_factory, pki):
    """Orthanc with DICOM TLS on its DICOM port, requiring a client certificate from our CA."""
    server = pki.issue("orthanc")
    return orthanc_factory(extra_config={
        "DicomTlsEnabled": True, "DicomTlsCertificate": str(server.cert),
        "DicomTlsPrivateKey": str(server.key), "DicomTlsTrustedCertificates": str(pki.cert),
        "DicomTlsRemoteCertificateRequired": True,
    })


def test_exporter_delivers_to_a_tls_orthanc(tls_orthanc, pki, tmp_path):
    series = generate_uid()
    files = make_series(tmp_path / "out", 3, series=series)
    client = pki.issue("synth-exporter", server=False)
    settings = Settings(data_dir=tmp_path, pacs=f"{tls_orthanc.aet}@127.0.0.1:{tls_orthanc.dicom_port}",
                        pacs_tls="on", pacs_tls_ca_certificates=pki.cert,
                        pacs_tls_certificate=client.cert, pacs_tls_private_key=client.key)
    pacs = PacsAddress.parse(str(settings.pacs))
    result = send_files(files, pacs, calling_ae="SYNTH", retries=0, backoff_seconds=0,
                        tls=pacs_client_context(settings))
    assert len(result.sent) == 3
    assert tls_orthanc.instance_count() == 3
    # Plain DICOM to the same port gets nowhere; nor does TLS without our client certificate.
    with pytest.raises(ExportError):
        send_files(files, pacs, calling_ae="SYNTH", retries=0, backoff_seconds=0)
    no_cert = settings.model_copy(update={"pacs_tls_certificate": None, "pacs_tls_private_key": None})
    with pytest.raises(ExportError):
        send_files(files, pacs, calling_ae="SYNTH", retries=0, backoff_seconds=0, tls=pacs_client_context(no_cert))
    # A PACS whose certificate our CA did not sign is refused by the exporter.
    foreign = settings.model_copy(update={"pacs_tls_ca_certificates": TestCA(tmp_path / "x").cert})
    with pytest.raises(ExportError):
        send_files(files, pacs, calling_ae="SYNTH", retries=0, backoff_seconds=0, tls=pacs_client_context(foreign))


def test_gateway_serves_https_with_the_runners_command(tmp_path, pki):
    """The runner's gateway command with SYNTH_HTTP_TLS_*: HTTPS verified against our CA; plain HTTP gets nothing."""
    import os
    import sys

    import httpx

    from service.runner import child_commands
    from tests.peers import free_port

    server = pki.issue("gateway")
    port = free_port()
    settings = Settings(data_dir=tmp_path / "data", http_host=HOST, http_port=port,
                        http_tls_certificate=server.cert, http_tls_private_key=server.key)
    command = child_commands(settings)["gateway"]
    assert command[0] == sys.executable and "--ssl-certfile" in command
    env = {**os.environ, "SYNTH_DATA_DIR": str(tmp_path / "data"), "SYNTH_AUTH": "off",
           "SYNTH_BROKER_URL": "redis://127.0.0.1:1/0"}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline, answer = time.monotonic() + 30, None
        while time.monotonic() < deadline and answer is None:
            try:
                answer = httpx.get(f"https://{HOST}:{port}/healthz", verify=str(pki.cert), timeout=15)
            except httpx.HTTPError:
                time.sleep(0.2)
        assert answer is not None and answer.status_code in (200, 503), answer
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://{HOST}:{port}/healthz", timeout=2)
        with pytest.raises(httpx.HTTPError):  # a certificate from another CA is not trusted
            httpx.get(f"https://{HOST}:{port}/healthz", verify=str(TestCA(tmp_path / "x").cert), timeout=2)
    finally:
        proc.terminate()
        proc.wait(10)
