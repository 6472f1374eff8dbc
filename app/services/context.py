"""What every service function needs: settings, a session factory and the bus."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.bus.base import Bus, BusEvent
from app.config import Settings
from app.db.hotpath import HotPath
from app.db.models import OutboxEntry
from app.db.sqlite_hotpath import SqliteHotPath
from app.errors import Unavailable
from app.services.outbox import OutboxRelay, Staged, encode_entry, publish_all

log = logging.getLogger("app.services")


@dataclass(slots=True)
class ServiceContext:
    settings: Settings
    sessions: async_sessionmaker[AsyncSession]
    bus: Bus
    outbox: OutboxRelay | None = None
    # The per-connection and per-message statements: asyncpg on Postgres, a sqlite3
    # connection of their own for an embedded database in a file; None: through the ORM.
    hot: HotPath | SqliteHotPath | None = None
    # This instance's fan-out, for a message stored here: its members get it straight after
    # the commit instead of after the round trip through the bus (whose copy they then skip,
    # by seq). Set with a bus that crosses processes; the in-process bus is as direct.
    deliver_local: Callable[[BusEvent], None] | None = None

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """A session whose storage outages surface as Unavailable (503), never as a crash."""
        try:
            async with self.sessions() as session:
                yield session
        except IntegrityError:
            raise
        except (TimeoutError, OperationalError, InterfaceError, PoolTimeout, OSError) as exc:
            log.warning("[WS] storage unavailable: %s", exc.__class__.__name__)
            raise Unavailable("storage unavailable, retry later") from exc
        except DBAPIError as exc:
            if exc.connection_invalidated:
                raise Unavailable("storage unavailable, retry later") from exc
            raise

    def stage(
        self, session: AsyncSession, stream: str, event: BusEvent, *, outbox_id: int | None = None
    ) -> Staged:
        """Record `event` in the transaction of `session` (when the outbox is on), unless the
        repository stored its outbox entry already (`outbox_id`)."""
        staged = Staged(stream, event, outbox_id=outbox_id)
        if self.outbox is not None and outbox_id is None:
            staged.entry = OutboxEntry(stream=stream, payload=encode_entry(event))
            session.add(staged.entry)
        return staged

    def for_outbox(self, stream: str, event: BusEvent) -> dict[str, Any]:
        """The `outbox_stream` and `outbox_event` keywords of a hot-path write: `event`,
        encoded, to store for `stream` in the same statement when the outbox is on; nothing
        when it is off."""
        if self.outbox is None:
            return {"outbox_stream": None, "outbox_event": b""}
        return {"outbox_stream": stream, "outbox_event": encode_entry(event)}

    async def dispatch(self, *staged: Staged) -> None:
        """Publish staged events after their commit; a bus outage leaves them to the relay."""
        if not staged:
            return
        try:
            await publish_all(self.bus, [(s.stream, s.event) for s in staged])
        except Unavailable:
            if self.outbox is None:
                raise
            log.warning("[WS] bus unavailable: %d events left to the outbox relay", len(staged))
            self.outbox.failed()
            return
        if self.outbox is not None:
            ids = [s.entry.id if s.entry is not None else s.outbox_id for s in staged]
            self.outbox.published([i for i in ids if i is not None])
