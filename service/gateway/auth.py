"""Who may call the gateway. `BearerAuth` (ASGI middleware) authenticates every request but
those to OPEN_PATHS before any of its body is read: no or an unknown token answers 401.
Each route then names the scope it needs with `requires(scope)` (403 without it);
tests/test_auth.py checks that every route does.

A browser cannot send a bearer header when it navigates: the dashboard's login form
(service.gateway.routes.dashboard) takes a token and keeps it in an HttpOnly,
SameSite=Strict cookie (SESSION_COOKIE), which is accepted instead of the header on the
dashboard's pages, their fragments and images, and the API docs (`takes_cookie`), never on
the JSON API but for the OHIF viewer (/viewer/), whose page reads DICOMweb on this origin:
the cookie is taken for GET and HEAD under /dicomweb/ (reads; the `read` scope is still
checked; SameSite=Strict keeps other sites' pages from sending it, and CORS never allows
credentials). A page asked for without a valid credential redirects to the login form.
Stylesheets and scripts under /static/ hold no data and are served to anyone.

Tokens are those of service.tokens (SYNTH_API_TOKEN, SYNTH_API_TOKENS_FILE) and, when
SYNTH_OIDC_ISSUER is set, JWTs of that issuer (service.gateway.oidc). SYNTH_AUTH=off
lets every request through with every scope.
"""

from __future__ import annotations

import logging
from http.cookies import CookieError, SimpleCookie
from urllib.parse import quote

from fastapi import Depends, HTTPException, Request
from fastapi.params import Depends as DependsParam
from starlette.responses import JSONResponse, RedirectResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from dicom_synth.settings import Settings, get_settings
from service.tokens import ANONYMOUS, SCOPES, Principal, TokenBook, TokenFileError

log = logging.getLogger(__name__)

LOGIN_PATH = "/dashboard/login"
OPEN_PATHS = frozenset({"/healthz", LOGIN_PATH})
OPEN_PREFIX = "/static/"
SESSION_COOKIE = "synth_session"
COOKIE_PATHS = frozenset({"/", "/docs", "/redoc", "/openapi.json"})
COOKIE_PREFIX = "/dashboard/"
VIEWER_PATH = "/viewer"
READ_COOKIE_PREFIX = "/dicomweb/"  # GET and HEAD only: what the viewer's page reads
METRICS_PATH = "/metrics"
"""Open too when SYNTH_METRICS_PUBLIC is true (a Prometheus on a trusted network)."""


def is_open(path: str, settings: Settings) -> bool:
    return (path in OPEN_PATHS or path.startswith(OPEN_PREFIX)
            or (path == METRICS_PATH and settings.metrics_public))


def takes_cookie(path: str, method: str = "GET") -> bool:
    """Whether the session cookie stands for a bearer token on `path` (the dashboard, the docs,
    the viewer, and DICOMweb's reads)."""
    return (path in COOKIE_PATHS or path.startswith(COOKIE_PREFIX) or path == VIEWER_PATH
            or path.startswith(VIEWER_PATH + "/")
            or (path.startswith(READ_COOKIE_PREFIX) and method in ("GET", "HEAD")))


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return None


def session_cookie(scope: Scope) -> str | None:
    raw = _header(scope, b"cookie")
    if not raw:
        return None
    try:
        morsel = SimpleCookie(raw).get(SESSION_COOKIE)
    except CookieError:
        return None
    return morsel.value if morsel is not None and morsel.value else None


def _wants_page(scope: Scope) -> bool:
    """A browser navigating (GET, asking for HTML): it is sent to the login form."""
    return scope["method"] == "GET" and "text/html" in (_header(scope, b"accept") or "")


def _to_login(scope: Scope) -> RedirectResponse:
    here = scope["path"] + (f"?{scope['query_string'].decode('latin-1')}" if scope.get("query_string") else "")
    return RedirectResponse(f"{LOGIN_PATH}?next={quote(here, safe='')}", status_code=303)


def settings_of(scope: Scope) -> Settings:
    app = scope.get("app")
    overrides = getattr(app, "dependency_overrides", {}) if app is not None else {}
    return overrides.get(get_settings, get_settings)()


def authenticate(settings: Settings, token: str) -> Principal | None:
    principal = TokenBook(settings).lookup(token)
    if principal is None and settings.oidc_issuer:
        from service.gateway.oidc import verify_jwt

        principal = verify_jwt(settings, token)
    return principal


def _bearer(scope: Scope) -> str | None:
    value = _header(scope, b"authorization")
    if value is None:
        return None
    kind, _, token = value.strip().partition(" ")
    return token.strip() if kind.lower() == "bearer" and token.strip() else None


def _unauthorized(detail: str, error: str | None) -> JSONResponse:
    challenge = 'Bearer realm="dicom-synth"' + (f', error="{error}"' if error else "")
    return JSONResponse({"detail": detail}, status_code=401, headers={"WWW-Authenticate": challenge})


class BearerAuth:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        settings = settings_of(scope)
        principal: Principal | None = ANONYMOUS
        session = None
        if settings.auth != "off" and not is_open(scope["path"], settings):
            token = _bearer(scope)
            cookie_here = takes_cookie(scope["path"], scope["method"])
            if token is None and _header(scope, b"authorization") is None and cookie_here:
                token = session = session_cookie(scope)
            if token is None and cookie_here and _wants_page(scope):
                await _to_login(scope)(scope, receive, send)
                return
            if token is None:
                await _unauthorized("a bearer token is required (Authorization: Bearer <token>)", None)(
                    scope, receive, send)
                return
            try:
                principal = authenticate(settings, token)
            except TokenFileError as exc:
                log.error("cannot read the tokens file: %s", exc)
                await JSONResponse({"detail": "the tokens file is invalid; see the gateway log"},
                                   status_code=500)(scope, receive, send)
                return
            if principal is None and session is not None and _wants_page(scope):
                await _to_login(scope)(scope, receive, send)  # a session whose token was revoked
                return
            if principal is None:
                await _unauthorized("the bearer token is not valid", "invalid_token")(scope, receive, send)
                return
        scope.setdefault("state", {})["principal"] = principal
        scope["state"]["session"] = session  # the cookie's token when it authenticated the request
        await self.app(scope, receive, send)


class ScopeCheck:
    """The dependency `requires(scope)` adds to a route: 403 unless the caller has `scope`."""

    def __init__(self, scope: str) -> None:
        if scope not in SCOPES:
            raise ValueError(f"unknown scope {scope!r}")
        self.scope = scope

    def __call__(self, request: Request) -> Principal:
        principal = getattr(request.state, "principal", None)
        if principal is None:  # BearerAuth not installed: refuse rather than open
            raise HTTPException(401, "not authenticated", headers={"WWW-Authenticate": "Bearer"})
        if not principal.may(self.scope):
            raise HTTPException(403, f"this token lacks the {self.scope!r} scope")
        return principal


def requires(scope: str) -> DependsParam:
    return Depends(ScopeCheck(scope))
