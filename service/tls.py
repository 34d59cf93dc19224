"""TLS contexts from the settings: the one place that decides how we speak TLS.

DICOM TLS follows the PS3.15 Annex B secure-transport profiles (B.9 BCP 195, B.11 BCP 195
extended): TLS 1.2 or later, the library's secure cipher defaults, certificates checked.
- the listener's TLS port (`dicom_server_context`): our certificate; with
  SYNTH_DICOM_TLS_CA_CERTIFICATES every peer must present a client certificate those
  CAs signed, else the handshake fails before any DICOM byte is read;
- the exporter (`pacs_client_context`): the PACS's certificate is checked against
  SYNTH_PACS_TLS_CA_CERTIFICATES (or the system's trust store) and its name; our own
  client certificate is sent when one is configured;
- the gateway (`uvicorn_tls_args`): HTTPS with SYNTH_HTTP_TLS_CERTIFICATE and _KEY.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from dicom_synth.settings import Settings


class TlsConfigError(ValueError):
    """TLS is asked for but its files are missing or unusable; says which setting."""


def _need(path: Path | None, setting: str) -> Path:
    if path is None:
        raise TlsConfigError(f"{setting} is required")
    if not Path(path).is_file():
        raise TlsConfigError(f"{setting}: no file {path}")
    return Path(path)


def _load_chain(ctx: ssl.SSLContext, cert: Path | None, key: Path | None, prefix: str) -> None:
    try:
        ctx.load_cert_chain(_need(cert, f"{prefix}_CERTIFICATE"), _need(key, f"{prefix}_PRIVATE_KEY"))
    except ssl.SSLError as exc:
        raise TlsConfigError(f"{prefix}_CERTIFICATE/_PRIVATE_KEY: {exc}") from exc


def dicom_server_context(settings: Settings) -> ssl.SSLContext | None:
    """The listener's TLS context, or None when no TLS port is set."""
    if settings.dicom_tls_port is None:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_chain(ctx, settings.dicom_tls_certificate, settings.dicom_tls_private_key, "SYNTH_DICOM_TLS")
    if settings.dicom_tls_ca_certificates is not None:
        ctx.load_verify_locations(_need(settings.dicom_tls_ca_certificates, "SYNTH_DICOM_TLS_CA_CERTIFICATES"))
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def pacs_client_context(settings: Settings) -> tuple[ssl.SSLContext, str] | None:
    """(context, server name) for pynetdicom's `tls_args`, or None when SYNTH_PACS_TLS is off."""
    if settings.pacs_tls != "on" or settings.pacs is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)  # CERT_REQUIRED, hostname checked
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if settings.pacs_tls_ca_certificates is not None:
        ctx.load_verify_locations(_need(settings.pacs_tls_ca_certificates, "SYNTH_PACS_TLS_CA_CERTIFICATES"))
    if settings.pacs_tls_certificate is not None or settings.pacs_tls_private_key is not None:
        _load_chain(ctx, settings.pacs_tls_certificate, settings.pacs_tls_private_key, "SYNTH_PACS_TLS")
    return ctx, settings.pacs_tls_server_name or settings.pacs.host


def uvicorn_tls_args(settings: Settings) -> list[str]:
    """uvicorn's command-line options for HTTPS; none when no certificate is set."""
    if settings.http_tls_certificate is None and settings.http_tls_private_key is None:
        return []
    cert = _need(settings.http_tls_certificate, "SYNTH_HTTP_TLS_CERTIFICATE")
    key = _need(settings.http_tls_private_key, "SYNTH_HTTP_TLS_PRIVATE_KEY")
    return ["--ssl-certfile", str(cert), "--ssl-keyfile", str(key)]
