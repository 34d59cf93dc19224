"""413 for a request body larger than `SYNTH_MAX_UPLOAD_BYTES`, before it is spooled.

A pure ASGI middleware: a `Content-Length` over the limit is answered at once, without
reading the body; a body without one (chunked) is counted as it arrives and, once past
the limit, the request is cut short and answered 413 (whatever the route would have said
about the half-read form is dropped). The limit is the app's own settings, the same ones
the routes get (tests override `get_settings` there).
"""

from __future__ import annotations

import json
from typing import Any

from dicom_synth.settings import Settings, get_settings


class _TooLarge(Exception):
    pass


def _settings(scope: dict[str, Any]) -> Settings:
    app = scope.get("app")
    overrides = getattr(app, "dependency_overrides", {}) or {}
    return overrides.get(get_settings, get_settings)()


class UploadSizeLimit:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        limit = _settings(scope).max_upload_bytes
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _refuse(send, limit)
            return
        received = 0
        over = False
        started = False

        async def counted_receive() -> dict[str, Any]:
            nonlocal received, over
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    over = True
                    raise _TooLarge
            return message

        async def guarded_send(message: dict[str, Any]) -> None:
            nonlocal started
            if over:
                return  # the route's answer to a half-read body; ours follows
            started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except Exception:
            if not over:
                raise
        if over and not started:
            await _refuse(send, limit)


async def _refuse(send: Any, limit: int) -> None:
    body = json.dumps({"detail": f"upload larger than SYNTH_MAX_UPLOAD_BYTES={limit}"}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
