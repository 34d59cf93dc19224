"""Shared fixtures: real peers (redis-server, Orthanc) on free loopback ports, and the
locations of real DICOM test files. Every fixture stops what it started."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.peers import (
    OrthancPeer,
    PostgresPeer,
    RedisPeer,
    default_job_db_url,
    session_postgres,
    start_orthanc,
    start_redis,
)
from tests.stack import ServiceStack, start_stack

REPO = Path(__file__).resolve().parents[1]
# Real scanner files live beside the repository (../shared/realdata, as CI lays it out);
# SYNTH_REALDATA points elsewhere for a checkout that has no such sibling.
REALDATA = Path(os.environ.get("SYNTH_REALDATA") or REPO.parent / "shared" / "realdata")
# This session's machine lost the four dcm_qa_enh files (a test moved them away, since
# fixed and guarded by `realdata_is_left_whole`); CI lays shared/ afresh with them. Tests
# that enumerate the real series expect them exactly when they are there.
MISSING_COLLECTIONS = frozenset(
    c for c in ("dcm_qa_enh",) if REALDATA.is_dir() and not any((REALDATA / c).rglob("*.dcm")))
# The job database of tests that do not choose one (`job_db_url`): sqlite or postgresql.


def _realdata_files() -> set[Path]:
    return {p for p in REALDATA.rglob("*") if p.is_file()} if REALDATA.is_dir() else set()


@pytest.fixture(scope="session", autouse=True)
def realdata_is_left_whole() -> Iterator[None]:
    """The real files are read, never moved or deleted (SeriesStore.put moves its file:
    hand it copies). Fails the session when any test took one away."""
    before = _realdata_files()
    yield
    gone = sorted(str(p.relative_to(REALDATA)) for p in before - _realdata_files())
    assert not gone, f"tests removed real scanner files from {REALDATA}: {gone}"


@pytest.fixture(scope="session")
def realdata() -> Path:
    """Real scanner-made DICOM files, shared beside the repository (never copied in)."""
    if not REALDATA.is_dir():
        pytest.fail(f"real DICOM test files not found at {REALDATA} (set SYNTH_REALDATA)")
    return REALDATA


@pytest.fixture
def redis_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[], RedisPeer]]:
    """Call it to start a fresh redis-server; all are stopped at teardown."""
    started: list[RedisPeer] = []

    def make() -> RedisPeer:
        peer = start_redis(tmp_path_factory.mktemp("redis"))
        started.append(peer)
        return peer

    yield make
    for peer in started:
        peer.stop()


@pytest.fixture
def redis_server(redis_factory: Callable[[], RedisPeer]) -> RedisPeer:
    return redis_factory()


@pytest.fixture
def orthanc_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., OrthancPeer]]:
    """Call `orthanc_factory(synth_port=PORT, ...)` (see `tests.peers.start_orthanc`) once
    the test knows where its listener runs; every Orthanc started is stopped at teardown."""
    started: list[OrthancPeer] = []

    def make(**kwargs) -> OrthancPeer:
        peer = start_orthanc(tmp_path_factory.mktemp("orthanc"), **kwargs)
        started.append(peer)
        return peer

    yield make
    for peer in started:
        peer.stop()


@pytest.fixture(scope="session")
def orthanc_pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancPeer]:
    """One plain Orthanc for the session, accepting any store, forwarding nothing.
    Tests sharing it must use their own study/series UIDs."""
    peer = start_orthanc(tmp_path_factory.mktemp("orthanc-pacs"))
    yield peer
    peer.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresPeer]:
    """One throwaway PostgreSQL cluster for the session (tests.peers.session_postgres, which
    `start_stack` uses too); each test takes its own database."""
    yield session_postgres()


@pytest.fixture
def job_db_url(request: pytest.FixtureRequest) -> str | None:
    """The job store of the test: None for the default (SQLite in the data dir), or a fresh
    PostgreSQL database. Tests run on both with
    `@pytest.mark.parametrize("job_db_url", ["sqlite", "postgresql"], indirect=True)`;
    others use SYNTH_TEST_JOB_DB (default sqlite)."""
    kind = getattr(request, "param", None)
    if kind is None:
        return default_job_db_url()
    if kind == "sqlite":
        return None
    if kind != "postgresql":
        raise ValueError(f"job database {kind!r}: expected sqlite or postgresql")
    return session_postgres().create_database(f"t{uuid.uuid4().hex[:12]}")


@pytest.fixture
def job_store_url(job_db_url: str | None, tmp_path: Path) -> str:
    """`job_db_url`, with an SQLite file in tmp_path standing for the default."""
    return job_db_url or f"sqlite:///{tmp_path / 'jobs.sqlite3'}"


@pytest.fixture
def stack_no_pacs(tmp_path: Path, redis_server: RedisPeer, job_db_url: str | None) -> Iterator[ServiceStack]:
    """The whole service (as `make run`) on a real redis-server, no PACS configured."""
    stack = start_stack(tmp_path / "svc", broker_url=redis_server.url, database_url=job_db_url)
    yield stack
    stack.stop()


@pytest.fixture
def browser():
    """A real headless Chromium (tests/browser.py); quit at teardown."""
    from tests.browser import chromium

    with chromium() as driver:
        yield driver
