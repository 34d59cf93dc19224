"""Alembic environment: runs on the connection `dicom_synth.database.upgrade` passes in
(`config.attributes["connection"]`), or on `sqlalchemy.url` for the alembic command line."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from dicom_synth.audit import audit_events  # noqa: F401  (its table joins the metadata)
from dicom_synth.jobstore import metadata

config = context.config


def run() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(config.get_main_option("sqlalchemy.url"))
    with engine.begin() as conn:
        context.configure(connection=conn, target_metadata=metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=metadata,
                      literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    run()
