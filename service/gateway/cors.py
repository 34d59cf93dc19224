"""CORS for pages of other origins (SYNTH_CORS_ORIGINS, default none): an OHIF viewer
served elsewhere calls the DICOMweb API with `Authorization: Bearer`. Credentials
(cookies) are never allowed cross-origin: the session cookie stays same-origin. The
outermost middleware, so a preflight is answered before BearerAuth asks for a token."""

from __future__ import annotations

from functools import lru_cache

from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from service.gateway.auth import settings_of

METHODS = ("GET", "HEAD", "POST", "OPTIONS")
HEADERS = ("Authorization", "Accept", "Content-Type")
EXPOSED = ("Content-Type", "Content-Length", "Warning", "WWW-Authenticate")


class Cors:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

        @lru_cache(maxsize=8)
        def middleware(origins: tuple[str, ...]) -> CORSMiddleware:
            return CORSMiddleware(app, allow_origins=origins, allow_methods=METHODS, allow_headers=HEADERS,
                                  expose_headers=EXPOSED, allow_credentials=False, max_age=600)

        self._middleware = middleware

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        origins = tuple(settings_of(scope).cors_origins) if scope["type"] == "http" else ()
        if not origins:
            await self.app(scope, receive, send)
            return
        await self._middleware(origins)(scope, receive, send)
