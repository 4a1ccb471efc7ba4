"""Session fixtures: a real SecantusDB per session, a fresh nats-server per test (0.1 s to start)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from shared.embedded import free_port, mongo_healthy, mongo_url, secantus_server, wait_until

from .support import NatsServer, start_nats


@pytest.fixture(scope="session")
def mongodb_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    tmp = tmp_path_factory.mktemp("secantus")
    port = free_port()
    child = secantus_server(tmp / "db", port, tmp / "secantus.log").start()
    url = mongo_url(port)
    try:
        wait_until(lambda: mongo_healthy(url), 60, "SecantusDB")
        yield url
    finally:
        child.stop()


@pytest.fixture
def nats_server(tmp_path: Path) -> NatsServer:
    server = start_nats(tmp_path / "nats")
    try:
        yield server
    finally:
        server.child.stop()


@pytest.fixture
def nats_url(nats_server: NatsServer) -> str:
    return nats_server.url


@pytest.fixture
def db_prefix() -> str:
    """A database prefix of its own for every test: tests never see each other's data."""
    return "t" + uuid.uuid4().hex[:12]
