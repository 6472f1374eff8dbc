"""Alembic owns the schema: upgrade, downgrade, upgrade again; models and migrations agree."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from app.db.base import metadata
from app.db.migrate import downgrade, upgrade
from app.db.session import normalize_url
from tests.support.services import PgDatabases

SPEC_TABLES = {"groups", "group_members", "messages", "read_marks", "notifications"}


def _run(url: str, fn: Any) -> Any:
    async def go() -> Any:
        engine = create_async_engine(normalize_url(url))
        try:
            async with engine.connect() as conn:
                return await conn.run_sync(fn)
        finally:
            await engine.dispose()

    return asyncio.run(go())


def tables(url: str) -> set[str]:
    return set(_run(url, lambda conn: inspect(conn).get_table_names()))


def schema_diff(url: str) -> list[Any]:
    def compare(conn: Connection) -> list[Any]:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(context, metadata))

    return list(_run(url, compare))


def columns(url: str, table: str) -> dict[str, Any]:
    return {c["name"]: c for c in _run(url, lambda conn: inspect(conn).get_columns(table))}


def unique_constraints(url: str, table: str) -> set[tuple[str, ...]]:
    found = _run(url, lambda conn: inspect(conn).get_unique_constraints(table))
    return {tuple(u["column_names"]) for u in found}


@pytest.fixture
def empty_pg(pg_databases: PgDatabases) -> Any:
    url = pg_databases.new(migrated=False)
    yield url
    pg_databases.drop(url)


@pytest.mark.postgres
def test_upgrade_downgrade_upgrade_on_postgres(empty_pg: str) -> None:
    assert tables(empty_pg) == set()
    upgrade(empty_pg)
    after_upgrade = tables(empty_pg)
    assert SPEC_TABLES | {"alembic_version"} <= after_upgrade
    assert set(metadata.tables) | {"alembic_version"} == after_upgrade
    downgrade(empty_pg, "base")
    assert tables(empty_pg) <= {"alembic_version"}
    upgrade(empty_pg)
    assert tables(empty_pg) == after_upgrade
    assert schema_diff(empty_pg) == []


@pytest.mark.postgres
def test_migrated_postgres_matches_the_models(pg_url: str) -> None:
    assert schema_diff(pg_url) == []


@pytest.mark.postgres
def test_spec_constraints_exist_on_postgres(pg_url: str) -> None:
    assert {("group_id", "seq"), ("group_id", "sender_id", "client_msg_id")} <= (
        unique_constraints(pg_url, "messages")
    )
    spec_columns = {
        "groups": {"id", "name", "owner_id", "last_seq", "created_at"},
        "group_members": {"group_id", "user_id", "role", "joined_at"},
        "messages": {
            "id",
            "group_id",
            "seq",
            "sender_id",
            "sender_name",
            "msg_type",
            "content",
            "image_url",
            "client_msg_id",
            "created_at",
        },
        "read_marks": {"user_id", "group_id", "last_read_seq", "updated_at"},
        "notifications": {"id", "user_id", "type", "title", "content", "created_at", "read_at"},
    }
    for table, expected in spec_columns.items():
        assert expected <= set(columns(pg_url, table)), table
    created = columns(pg_url, "messages")["created_at"]
    assert getattr(created["type"], "timezone", False) is True  # timestamptz


def test_upgrade_downgrade_upgrade_on_sqlite(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'migrate.db'}"
    upgrade(url)
    after_upgrade = tables(url)
    assert SPEC_TABLES <= after_upgrade
    downgrade(url, "base")
    assert tables(url) <= {"alembic_version"}
    upgrade(url)
    assert tables(url) == after_upgrade
    assert schema_diff(url) == []
    assert {("group_id", "seq"), ("group_id", "sender_id", "client_msg_id")} <= (
        unique_constraints(url, "messages")
    )


def test_schema_diff_sees_drift(tmp_path: Path) -> None:
    """The comparison is not vacuous: a schema that lost an index shows a difference."""
    from sqlalchemy import text

    url = f"sqlite+aiosqlite:///{tmp_path / 'drift.db'}"
    upgrade(url)

    def drop(conn: Connection) -> None:
        conn.execute(text("DROP INDEX ix_group_members_user_id"))
        conn.commit()

    _run(url, drop)
    diff = schema_diff(url)
    assert any(d[0] == "add_index" and d[1].name == "ix_group_members_user_id" for d in diff)
