"""Reaching the real PostgreSQL and Redis: per-test databases, skip-or-fail when absent."""

from __future__ import annotations

import asyncio
import os
import uuid
from urllib.parse import urlsplit, urlunsplit

import pytest

CI = os.environ.get("CI", "").lower() == "true"

PG_URL = os.environ.get("TEST_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def unavailable(what: str, why: str) -> None:
    """Skip with a visible reason, except under CI=true, where a missing service fails."""
    message = f"{what} unreachable ({why})"
    if CI:
        pytest.fail(f"{message}; CI=true requires it", pytrace=False)
    pytest.skip(message)


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def _asyncpg_dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def _pg_execute(url: str, *statements: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(_asyncpg_dsn(url), timeout=5)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


def pg_check() -> str | None:
    """None when Postgres answers, else the reason."""
    try:
        asyncio.run(_pg_execute(PG_URL, "SELECT 1"))
    except Exception as exc:
        return f"{exc.__class__.__name__}: {exc}"
    return None


class PgDatabases:
    """A migrated template database, cloned into a fresh database for each test."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.template = f"campushub_tmpl_{uuid.uuid4().hex[:8]}"
        self.created: list[str] = []

    def setup(self) -> None:
        from app.db.migrate import upgrade

        asyncio.run(_pg_execute(self.admin_url, f'CREATE DATABASE "{self.template}"'))
        upgrade(with_database(self.admin_url, self.template))

    def new(self, *, migrated: bool = True) -> str:
        name = f"campushub_t_{uuid.uuid4().hex[:10]}"
        clause = f' TEMPLATE "{self.template}"' if migrated else ""
        asyncio.run(_pg_execute(self.admin_url, f'CREATE DATABASE "{name}"{clause}'))
        self.created.append(name)
        return with_database(self.admin_url, name)

    def drop(self, url: str) -> None:
        name = urlsplit(url).path.lstrip("/")
        asyncio.run(_pg_execute(self.admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        if name in self.created:
            self.created.remove(name)

    def teardown(self) -> None:
        for name in [*self.created, self.template]:
            try:
                asyncio.run(
                    _pg_execute(self.admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                )
            except Exception:
                pass


def redis_check() -> str | None:
    import redis

    try:
        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
        client.ping()
        client.close()
    except Exception as exc:
        return f"{exc.__class__.__name__}: {exc}"
    return None


# -- Shared REST clients (one app per test module and backend) ---------------------------------

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


def shared_client(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """Yield a TestClient on embedded SQLite or on a fresh migrated Postgres database.

    For module-scoped fixtures parametrised over BACKENDS: tests sharing it keep apart by using
    user ids of their own (see `unique`).
    """
    from app.config import Settings
    from app.main import create_app
    from tests.support.openapi import checked_client
    from tests.support.tokens import SECRET

    url: str | None = None
    databases: PgDatabases | None = None
    if request.param == "postgres":
        databases = request.getfixturevalue("pg_databases")
        url = databases.new()
        settings = Settings(DATABASE_URL=url, JWT_SECRET=SECRET, _env_file=None)
    else:
        path = tmp_path_factory.mktemp("shared") / "test.db"
        settings = Settings(SQLITE_PATH=str(path), JWT_SECRET=SECRET, _env_file=None)
    try:
        with checked_client(create_app(settings)) as client:
            yield client
    finally:
        if databases is not None and url is not None:
            databases.drop(url)


def unique(name: str) -> str:
    """A user id of this test's own, readable in failures: `alice-1a2b3c4d`."""
    return f"{name}-{uuid.uuid4().hex[:8]}"


class Users:
    """`users.alice` is a user id unique to this object, the same on every access."""

    def __init__(self) -> None:
        self._ids: dict[str, str] = {}

    def __getattr__(self, name: str) -> str:
        if name.startswith("_"):
            raise AttributeError(name)
        return self._ids.setdefault(name, unique(name))
