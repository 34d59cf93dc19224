"""The outbox (dicom_synth.jobstate): when a job's pending message is due to be sent by
the relay (NULL once sent or taken), indexed for the relay's query.

Revision ID: 0003_outbox
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_outbox"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("outbox_due", sa.Float, nullable=True))
    op.create_index("jobs_outbox_due", "jobs", ["outbox_due"])


def downgrade() -> None:
    op.drop_index("jobs_outbox_due", "jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("outbox_due")
