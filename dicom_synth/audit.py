"""The audit trail, in the job database: who reached patient data, what they did, when and
from where. Shared by the operator's view (issue 19) and the security review (issue 17):
one trail.

Kinds of event:
- `association` (the listener): the calling AE is `who`, its address `address`; the
  outcome (released, aborted, rejected: <reason>, ...), the instances stored and refused
  and the duration are in `detail`;
- `api` (the gateway): a call that reads or changes patient data; `who` is the token's
  name or the OIDC subject, `action` the method and route (`GET /jobs/{job_id}`),
  `subject` the job ID, `outcome` the HTTP status;
- `purge` (retention): what was deleted, `subject` the job ID.

It holds no pixel data and no PHI beyond UIDs and job IDs: callers pass identifiers and
counts, never names, patient IDs, accession numbers or dates (no query strings either).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Column, Engine, Float, Index, Integer, Table, Text, insert, select

from dicom_synth.database import engine_for, sqlite_url
from dicom_synth.jobstore import metadata

log = logging.getLogger(__name__)

KINDS = ("association", "api", "purge")

audit_events = Table(
    "audit_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", Float, nullable=False),
    Column("kind", Text, nullable=False),
    Column("who", Text, nullable=False),
    Column("address", Text),
    Column("action", Text, nullable=False),
    Column("subject", Text),
    Column("outcome", Text, nullable=False),
    Column("detail", Text, nullable=False),
    Index("audit_events_at", "at"),
    Index("audit_events_kind_at", "kind", "at"),
)

_COLUMNS = ("id", "at", "kind", "who", "address", "action", "subject", "outcome")


class AuditTrail:
    def __init__(self, url: str | Path) -> None:
        """`url`: the job database's SQLAlchemy URL, or the path of an SQLite file."""
        self.url = url if isinstance(url, str) else sqlite_url(url)

    @property
    def engine(self) -> Engine:
        """Opened at first use: a listener that never records makes no database."""
        return engine_for(self.url)

    def record(self, kind: str, *, who: str, action: str, outcome: str, address: str | None = None,
               subject: str | None = None, detail: dict[str, Any] | None = None,
               at: float | None = None) -> None:
        """Append one event (identifiers and counts only: see the module's docstring)."""
        if kind not in KINDS:
            raise ValueError(f"unknown audit kind {kind!r} (one of {', '.join(KINDS)})")
        with self.engine.begin() as conn:
            conn.execute(insert(audit_events).values(
                at=time.time() if at is None else at, kind=kind, who=who, address=address, action=action,
                subject=subject, outcome=outcome, detail=json.dumps(detail or {}, sort_keys=True),
            ))

    def record_quietly(self, kind: str, **event: Any) -> bool:
        """`record`, logging instead of raising: an unwritable trail must not stop a store
        or an answer (the log then says what was not recorded)."""
        try:
            self.record(kind, **event)
            return True
        except Exception:
            log.exception("audit event not recorded: %s %s %s", kind, event.get("action"), event.get("outcome"))
            return False

    def events(self, *, since: float | None = None, kind: str | None = None, who: str | None = None,
               limit: int = 100) -> list[dict[str, Any]]:
        """Events newest first: those at or after `since` (epoch seconds), of `kind`, by `who`."""
        query = select(audit_events).order_by(audit_events.c.at.desc(), audit_events.c.id.desc())
        if since is not None:
            query = query.where(audit_events.c.at >= since)
        if kind is not None:
            query = query.where(audit_events.c.kind == kind)
        if who is not None:
            query = query.where(audit_events.c.who == who)
        with self.engine.connect() as conn:
            rows = conn.execute(query.limit(max(1, limit))).mappings().all()
        return [{**{c: row[c] for c in _COLUMNS}, "detail": json.loads(row["detail"])} for row in rows]
