"""Columns the dashboard filters and searches jobs by (dicom_synth.jobsearch), each indexed
with the creation time so a filtered page is an index range, not a scan of every body:
task, origin (`dicom:<calling AE>` or `http`), and keyed digests of the accession number and
patient ID (dicom_synth.jobsearch: never the values).

Rows already there get their task and origin from their JSON body; their digests
stay empty (the job never recorded them).

Revision ID: 0004_job_search
Revises: 0003_outbox
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

revision = "0004_job_search"
down_revision = "0003_outbox"
branch_labels = None
depends_on = None

COLUMNS = ("task", "origin", "accession_digest", "patient_digest")
INDEXES = {
    "jobs_status_created": ["status", "created_at"],
    "jobs_task_created": ["task", "created_at"],
    "jobs_origin_created": ["origin", "created_at"],
    "jobs_accession": ["accession_digest"],
    "jobs_patient": ["patient_digest"],
}


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        for name in COLUMNS:
            batch.add_column(sa.Column(name, sa.Text, nullable=True))
    for name, columns in INDEXES.items():
        op.create_index(name, "jobs", columns)
    bind = op.get_bind()
    jobs = sa.table("jobs", sa.column("job_id"), sa.column("body"), sa.column("task"), sa.column("origin"))
    rows = bind.execute(sa.select(jobs.c.job_id, jobs.c.body)).all()
    for job_id, body in rows:
        data = json.loads(body)
        bind.execute(sa.update(jobs).where(jobs.c.job_id == job_id)
                     .values(task=data.get("task"), origin=data.get("origin")))


def downgrade() -> None:
    for name in INDEXES:
        op.drop_index(name, "jobs")
    with op.batch_alter_table("jobs") as batch:
        for name in COLUMNS:
            batch.drop_column(name)
