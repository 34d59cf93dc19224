"""Records each HTTP call that reads or changes patient data in the audit trail
(dicom_synth.audit): who (the token's name or OIDC subject; `-` when not authenticated),
what (method and route, the job ID), when, from where, and the answer's status. Calls
refused for want of a valid token are recorded too. Query strings are not: a search by
patient ID must not put that ID in the trail."""

from __future__ import annotations

import json

from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dicom_synth.audit import AuditTrail
from service.gateway.auth import settings_of

AUDITED_PREFIXES = ("/synthesize", "/jobs", "/dicomweb", "/audit", "/", "/dashboard/jobs")
"""Routes on patient data (jobs, results, DICOMweb) and on the trail itself; the dashboard's
job list (`/`, exactly) and job pages, downloads and actions. Not its polling fragments
and preview images (/dashboard/live, /dashboard/previews): they repeat what the audited
page showed, every second."""
_BODY_PEEK = 4096  # enough for the job ID in POST /synthesize's answer


def audited(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in AUDITED_PREFIXES)


class AuditCalls:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not audited(scope["path"]):
            await self.app(scope, receive, send)
            return
        answer: dict = {"status": 500, "body": b""}

        async def watch(message: Message) -> None:
            if message["type"] == "http.response.start":
                answer["status"] = message["status"]
            elif message["type"] == "http.response.body" and len(answer["body"]) < _BODY_PEEK:
                answer["body"] += message.get("body", b"")[:_BODY_PEEK]
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            await run_in_threadpool(_record, scope, answer["status"], answer["body"])


def _record(scope: Scope, status: int, body: bytes) -> None:
    principal = scope.get("state", {}).get("principal") if status != 401 else None
    route = scope.get("route")
    path = getattr(route, "path", None) or scope["path"]
    subject = (scope.get("path_params") or {}).get("job_id")
    if subject is None and scope["method"] == "POST" and status < 300:
        subject = _job_id_of(body)
    client = scope.get("client")
    AuditTrail(settings_of(scope).jobs_db_url).record_quietly(
        "api", who=principal.name if principal is not None else "-", address=client[0] if client else None,
        action=f"{scope['method']} {path}", subject=subject, outcome=str(status))


def _job_id_of(body: bytes) -> str | None:
    try:
        value = json.loads(body)
    except ValueError:
        return None
    job_id = value.get("job_id") if isinstance(value, dict) else None
    return str(job_id) if job_id is not None else None
