"""GET /audit: the audit trail (dicom_synth.audit), newest first; admin scope."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from dicom_synth.audit import KINDS, AuditTrail
from dicom_synth.settings import Settings, get_settings
from service.gateway.auth import requires

router = APIRouter(dependencies=[requires("admin")])


def get_audit_trail(settings: Annotated[Settings, Depends(get_settings)]) -> AuditTrail:
    return AuditTrail(settings.jobs_db_url)


@router.get("/audit")
def list_audit(
    trail: Annotated[AuditTrail, Depends(get_audit_trail)],
    since: Annotated[float | None, Query(description="epoch seconds: events at or after")] = None,
    kind: Annotated[str | None, Query(description=f"one of {', '.join(KINDS)}", pattern="^(" + "|".join(KINDS) + ")$")]
    = None,
    who: Annotated[str | None, Query(description="a calling AE title, token name or OIDC subject")] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
) -> list[dict]:
    """Associations, API calls on patient data and purges: who, what, when, from where."""
    return trail.events(since=since, kind=kind, who=who, limit=limit)
