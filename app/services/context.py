"""What every service function needs: settings, a session factory and the bus."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.bus.base import Bus, BusEvent
from app.config import Settings
from app.errors import Unavailable

log = logging.getLogger("app.services")


@dataclass(slots=True)
class ServiceContext:
    settings: Settings
    sessions: async_sessionmaker[AsyncSession]
    bus: Bus

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

    async def publish(self, stream: str, event: BusEvent) -> None:
        await self.bus.publish(stream, event)
