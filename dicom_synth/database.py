"""The job database: one SQLAlchemy engine per URL and process, brought to the newest
schema (Alembic `upgrade head`) the first time a process opens it.

SQLite (the embedded default) runs in WAL mode with synchronous=FULL, and a write
transaction starts with BEGIN IMMEDIATE, so two processes never both read a row and
then write it; PostgreSQL gets the same from SELECT … FOR UPDATE. Migrations on start
are serialised (SQLite: BEGIN IMMEDIATE; PostgreSQL: an advisory lock), so processes
that start together upgrade once.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url

_PG_MIGRATION_LOCK = 0x5D1C0_0001  # pg_advisory_xact_lock key for `upgrade head`
_IMMEDIATE = "dicom_synth_immediate"
_engines: dict[tuple[str, int], Engine] = {}
_lock = threading.Lock()


class JobStoreUnavailable(RuntimeError):
    """The job store cannot be read or written now (a full disk, the database down): not
    the job's fault; refuse new work (HTTP 507, DICOM 0xA700) and try again later."""


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{Path(path)}"


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def _sqlite_engine(url: str) -> Engine:
    database = make_url(url).database
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": 30})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, record) -> None:  # noqa: ARG001
        dbapi_conn.isolation_level = None  # SQLAlchemy's "begin" event below issues BEGIN
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(_IMMEDIATE) else "BEGIN")

    return engine


def _forget_parent_connections() -> None:
    """In a forked child: drop the parent's pooled connections without closing them
    (closing would end the parent's sessions); the child opens its own."""
    for engine in _engines.values():
        engine.dispose(close=False)


os.register_at_fork(after_in_child=_forget_parent_connections)


def engine_for(url: str) -> Engine:
    """The engine for `url` in this process (a forked child makes its own)."""
    key = (url, os.getpid())
    with _lock:
        engine = _engines.get(key)
        if engine is None:
            engine = _sqlite_engine(url) if is_sqlite(url) else create_engine(url, pool_pre_ping=True)
            upgrade(engine)
            _engines[key] = engine
    return engine


def write_connection(engine: Engine) -> Connection:
    """A connection whose transactions may write: BEGIN IMMEDIATE on SQLite."""
    return engine.connect().execution_options(**{_IMMEDIATE: True})


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Alembic `upgrade head` (or to `revision`), serialised between processes."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", "dicom_synth:migrations")
    with write_connection(engine) as conn, conn.begin():
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK})
        config.attributes["connection"] = conn
        command.upgrade(config, revision)


def head_revision() -> str:
    """The newest revision of dicom_synth/migrations (raises when two revisions fork)."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", "dicom_synth:migrations")
    return ScriptDirectory.from_config(config).get_current_head()


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()
