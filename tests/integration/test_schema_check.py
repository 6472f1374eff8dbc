"""/ready and the start-up log tell whether the database is migrated for this version."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.db.migrate import SchemaCheck, downgrade, upgrade
from app.main import create_app
from tests.support import services
from tests.support.tokens import SECRET

SCHEMA = SchemaCheck.of_scripts()
FIRST = min(SCHEMA.known - {SCHEMA.head})  # the first revision: the schema before the outbox


def test_the_scripts_head_and_what_it_accepts() -> None:
    assert SCHEMA.head in SCHEMA.known and len(SCHEMA.known) >= 2
    assert SCHEMA.usable(SCHEMA.head)
    assert not SCHEMA.usable(None), "never migrated"
    assert not SCHEMA.usable(FIRST), "behind this version"
    assert SCHEMA.usable("9999_from_a_newer_version"), "a rolling upgrade migrated ahead"


def ready(client: TestClient) -> tuple[int, dict[str, Any]]:
    response = client.get("/ready")
    return response.status_code, response.json()["checks"]


def test_embedded_mode_migrates_itself_and_is_ready(settings: Settings) -> None:
    with TestClient(create_app(settings)) as client:
        assert ready(client) == (
            200,
            {"database": True, "schema": True, "bus": True, "fanout": True},
        )


@pytest.mark.postgres
def test_postgres_not_migrated_is_not_ready_until_it_is(
    pg_databases: services.PgDatabases, caplog: pytest.LogCaptureFixture
) -> None:
    url = pg_databases.new(migrated=False)
    settings = Settings(DATABASE_URL=url, JWT_SECRET=SECRET, _env_file=None)  # type: ignore[call-arg]
    try:
        with caplog.at_level(logging.WARNING), TestClient(create_app(settings)) as client:
            status, checks = ready(client)
            assert (status, checks["database"], checks["schema"]) == (503, True, False)
            said = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
            assert any("run `python -m app migrate`" in m and "never migrated" in m for m in said)

            upgrade(url)
            assert ready(client)[0] == 200

            downgrade(url, FIRST)  # behind: this version's tables are not all there
            status, checks = ready(client)
            assert (status, checks["database"], checks["schema"]) == (503, True, False)

            upgrade(url)
            # A newer version migrated ahead during a rolling upgrade: this one stays ready.
            asyncio.run(
                services._pg_execute(url, "UPDATE alembic_version SET version_num = '9999_next'")
            )
            assert ready(client)[0] == 200
    finally:
        pg_databases.drop(url)


@pytest.mark.postgres
def test_postgres_at_a_newer_revision_starts_with_a_warning(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    asyncio.run(
        services._pg_execute(pg_url, "UPDATE alembic_version SET version_num = '9999_next'")
    )
    settings = Settings(DATABASE_URL=pg_url, JWT_SECRET=SECRET, _env_file=None)  # type: ignore[call-arg]
    with caplog.at_level(logging.WARNING), TestClient(create_app(settings)) as client:
        assert ready(client)[0] == 200
    said = [(r.levelno, r.getMessage()) for r in caplog.records if r.name.startswith("app")]
    assert any(level == logging.WARNING and "newer than" in m for level, m in said)
    assert not any(level >= logging.ERROR for level, _ in said)
