"""Fixtures: embedded settings, the real Postgres (a fresh database per test), Redis, servers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from tests.support import services
from tests.support.openapi import checked_client
from tests.support.server import ServerProcess
from tests.support.tokens import SECRET


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(SQLITE_PATH=str(tmp_path / "test.db"), JWT_SECRET=SECRET, _env_file=None)  # type: ignore[call-arg]


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with checked_client(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture(scope="session")
def pg_databases() -> Iterator[services.PgDatabases]:
    reason = services.pg_check()
    if reason is not None:
        services.unavailable("PostgreSQL", reason)
    databases = services.PgDatabases(services.PG_URL)
    databases.setup()
    yield databases
    databases.teardown()


@pytest.fixture
def pg_url(pg_databases: services.PgDatabases) -> Iterator[str]:
    """A fresh, migrated Postgres database of this test's own."""
    url = pg_databases.new()
    yield url
    pg_databases.drop(url)


@pytest.fixture
def pg_settings(pg_url: str) -> Settings:
    return Settings(DATABASE_URL=pg_url, JWT_SECRET=SECRET, _env_file=None)  # type: ignore[call-arg]


@pytest.fixture
def pg_client(pg_settings: Settings) -> Iterator[TestClient]:
    with checked_client(create_app(pg_settings)) as test_client:
        yield test_client


@pytest.fixture
def redis_url() -> str:
    """The real Redis, database 15, emptied for this test."""
    reason = services.redis_check()
    if reason is not None:
        services.unavailable("Redis", reason)
    import redis

    client = redis.Redis.from_url(services.REDIS_URL)
    client.flushdb()
    client.close()
    return services.REDIS_URL


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start real `python -m app serve` processes; all are stopped at teardown."""
    started: list[ServerProcess] = []

    def start(
        env: dict[str, str] | None = None, *, wait: bool = True, **kwargs: object
    ) -> ServerProcess:
        """Spawn a server; with wait=False call `.wait_ready()` later (start several at once)."""
        base = {"JWT_SECRET": SECRET, "SQLITE_PATH": str(tmp_path / "server.db")}
        server = ServerProcess({**base, **(env or {})}, tmp_path, **kwargs)  # type: ignore[arg-type]
        started.append(server)
        server.spawn()
        return server.wait_ready() if wait else server

    yield start
    for server in started:
        server.stop()
