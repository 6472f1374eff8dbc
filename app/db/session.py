"""Engine and session factory; built in the app's lifespan, never at import time."""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)


def normalize_url(url: str) -> str:
    """Accept plain `postgresql://` and `sqlite://` URLs and pick the async drivers."""
    for plain, async_ in (
        ("postgresql://", "postgresql+asyncpg://"),
        ("postgres://", "postgresql+asyncpg://"),
        ("sqlite://", "sqlite+aiosqlite://"),
    ):
        if url.startswith(plain):
            return async_ + url[len(plain) :]
    return url


def make_engine(url: str, *, pool_size: int = 10) -> AsyncEngine:
    url = normalize_url(url)
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        # One connection serialises SQLite writers: no "database is locked" under concurrency,
        # and seq allocation stays gap-free exactly as on Postgres.
        kwargs.update(pool_size=1, max_overflow=0, connect_args={"timeout": 30})
    else:
        # No pre-ping (a round trip per checkout): a dead connection fails its request with
        # 503 and SQLAlchemy then invalidates the whole pool, so the next one reconnects.
        # A fixed pool: overflow connections are closed on return whenever the pool is full,
        # so under load they were opened and closed per request (a TLS attempt and a
        # handshake each). Requests wait for a pooled connection instead (503 after 10 s).
        kwargs.update(pool_size=pool_size, max_overflow=0, pool_timeout=10)
        kwargs.update(connect_args={"timeout": 5, "command_timeout": 10})
    engine = create_async_engine(url, **kwargs)
    if url.startswith("sqlite"):

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

    return engine


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)
