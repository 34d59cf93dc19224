"""The dashboard's browser session: the cookie that carries the token the operator typed
into the login form (read back by service.gateway.auth), and the CSRF tokens its forms
carry. A form's token is an HMAC, under a secret kept in the data directory, of the
session it belongs to, so a page of another site can neither read nor forge it; the
login form's is a random value it must echo from its own cookie."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response

from dicom_synth.settings import Settings
from service.gateway.auth import LOGIN_PATH, SESSION_COOKIE

SECRET_FILE = "dashboard-secret"
LOGIN_COOKIE = "synth_login"
SESSION_SECONDS = 12 * 3600


def _secret(settings: Settings) -> bytes:
    """The data directory's CSRF secret, made (mode 0600) by the first gateway that needs it."""
    path = Path(settings.data_dir) / SECRET_FILE
    try:
        return bytes.fromhex(path.read_text().strip())
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another gateway made it meanwhile
        return bytes.fromhex(path.read_text().strip())
    value = secrets.token_hex(32)
    with os.fdopen(fd, "w") as f:
        f.write(value)
    return bytes.fromhex(value)


def session_of(request: Request) -> str | None:
    """The token of the cookie that authenticated the request (None: a bearer header, or no auth)."""
    return getattr(request.state, "session", None)


def csrf_token(settings: Settings, request: Request) -> str:
    """The token the dashboard's forms carry for this request's session."""
    session = session_of(request) or ""
    return hmac.new(_secret(settings), b"csrf:" + session.encode(), hashlib.sha256).hexdigest()


def csrf_ok(settings: Settings, request: Request, given: str | None) -> bool:
    """A form's token matches the session. A request authenticated by a bearer header
    needs none: a browser never adds that header by itself."""
    if request.headers.get("authorization"):
        return True
    return bool(given) and hmac.compare_digest(given, csrf_token(settings, request))


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def new_login_nonce() -> str:
    """A fresh value for the login form, kept in a cookie of its own (`keep_login_nonce`)."""
    return secrets.token_urlsafe(24)


def keep_login_nonce(request: Request, response: Response, nonce: str) -> None:
    response.set_cookie(LOGIN_COOKIE, nonce, max_age=600, path=LOGIN_PATH, httponly=True, samesite="strict",
                        secure=_secure(request))


def login_nonce_ok(request: Request, given: str | None) -> bool:
    kept = request.cookies.get(LOGIN_COOKIE)
    return bool(kept) and bool(given) and hmac.compare_digest(kept, given)


def set_session(request: Request, response: Response, token: str) -> None:
    response.set_cookie(SESSION_COOKIE, token, max_age=SESSION_SECONDS, path="/", httponly=True,
                        samesite="strict", secure=_secure(request))
    response.delete_cookie(LOGIN_COOKIE, path=LOGIN_PATH)


def end_session(request: Request, response: Response) -> None:
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict", secure=_secure(request))


def safe_next(target: str | None) -> str:
    """Where to go after logging in: a path on this site only (no //host, no scheme)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target
