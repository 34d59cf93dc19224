"""The jobs table: one row per job, its status and times as columns, the rest a JSON body.

Data directories made before Alembic already hold this table (same columns, same
indexes, made by `CREATE TABLE IF NOT EXISTS`); it is adopted as it is.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    if not inspector.has_table("jobs"):
        op.create_table(
            "jobs",
            sa.Column("job_id", sa.Text, primary_key=True),
            sa.Column("status", sa.Text, nullable=False),
            sa.Column("created_at", sa.Float, nullable=False),
            sa.Column("updated_at", sa.Float, nullable=False),
            sa.Column("body", sa.Text, nullable=False),
        )
    indexes = {ix["name"] for ix in inspector.get_indexes("jobs")} if inspector.has_table("jobs") else set()
    if "jobs_created" not in indexes:
        op.create_index("jobs_created", "jobs", ["created_at"])
    if "jobs_status" not in indexes:
        op.create_index("jobs_status", "jobs", ["status"])


def downgrade() -> None:
    op.drop_table("jobs")
