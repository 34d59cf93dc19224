"""Shared fixtures: real peers (redis-server, Orthanc) on free loopback ports, and the
locations of real DICOM test files. Every fixture stops what it started."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.peers import OrthancPeer, RedisPeer, start_orthanc, start_redis
from tests.stack import ServiceStack, start_stack

REPO = Path(__file__).resolve().parents[1]
# Real scanner files live beside the repository (../shared/realdata, as CI lays it out);
# SYNTH_REALDATA points elsewhere for a checkout that has no such sibling.
REALDATA = Path(os.environ.get("SYNTH_REALDATA") or REPO.parent / "shared" / "realdata")


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


@pytest.fixture
def stack_no_pacs(tmp_path: Path, redis_server: RedisPeer) -> Iterator[ServiceStack]:
    """The whole service (as `make run`) on a real redis-server, no PACS configured."""
    stack = start_stack(tmp_path / "svc", broker_url=redis_server.url)
    yield stack
    stack.stop()
