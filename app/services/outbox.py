"""Transactional outbox: events stored with their data, published after commit, relayed if not."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import timedelta

import orjson
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.bus.base import Bus, BusEvent
from app.db.base import utcnow
from app.db.models import OutboxEntry
from app.errors import Unavailable

log = logging.getLogger("app.outbox")

RELAY_BATCH = 500


@dataclass(slots=True)
class Staged:
    stream: str
    event: BusEvent
    entry: OutboxEntry | None = None
    outbox_id: int | None = None


def encode_entry(event: BusEvent) -> bytes:
    return orjson.dumps({"k": event.kind, "d": event.data})


def decode_entry(payload: bytes) -> BusEvent:
    raw = orjson.loads(payload)
    return BusEvent(kind=raw["k"], data=raw["d"])


async def publish_all(bus: Bus, items: list[tuple[str, BusEvent]]) -> None:
    many = getattr(bus, "publish_many", None)
    if many is not None and len(items) > 1:
        await many(items)
        return
    for stream, event in items:
        await bus.publish(stream, event)


class OutboxRelay:
    """Deletes published entries in batches and publishes the ones left behind.

    An entry is left behind when the bus was down at commit time, or when the process died
    between commit and publish. Several instances may relay at once: rows are claimed with
    FOR UPDATE SKIP LOCKED, and the hub drops a message seq it already delivered.
    """

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        bus: Bus,
        *,
        interval: float = 0.5,
        grace: float = 5.0,
    ) -> None:
        self.sessions = sessions
        self.bus = bus
        self.interval = interval
        self.grace = grace
        self._published: list[int] = []
        self._failed = False
        self._wake = asyncio.Event()

    def published(self, ids: list[int]) -> None:
        self._published.extend(ids)

    def failed(self) -> None:
        """A publish failed: relay without waiting for the grace period."""
        self._failed = True
        self._wake.set()

    async def run(self) -> None:
        while True:
            try:
                async with asyncio.timeout(self.interval):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self._delete_published()
                await self.relay_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # storage or bus down: try again next round
                log.warning("[WS] outbox relay round failed: %s", exc.__class__.__name__)

    async def _delete_published(self) -> None:
        if not self._published:
            return
        ids, self._published = self._published, []
        try:
            async with self.sessions() as session:
                await session.execute(delete(OutboxEntry).where(OutboxEntry.id.in_(ids)))
                await session.commit()
        except Exception:
            self._published.extend(ids)
            raise

    async def relay_once(self) -> int:
        """Publish and delete entries left behind; returns how many were relayed."""
        grace = 0.0 if self._failed else self.grace
        cutoff = utcnow() - timedelta(seconds=grace)
        async with self.sessions() as session:
            rows = list(
                await session.scalars(
                    select(OutboxEntry)
                    .where(OutboxEntry.created_at <= cutoff)
                    .order_by(OutboxEntry.id)
                    .limit(RELAY_BATCH)
                    .with_for_update(skip_locked=True)
                )
            )
            if not rows:
                self._failed = False
                return 0
            try:
                await publish_all(self.bus, [(r.stream, decode_entry(r.payload)) for r in rows])
            except Unavailable:
                await session.rollback()
                self._failed = True
                return 0
            await session.execute(
                delete(OutboxEntry).where(OutboxEntry.id.in_([r.id for r in rows]))
            )
            await session.commit()
        log.info("[WS] outbox relayed %d events", len(rows))
        if len(rows) == RELAY_BATCH:
            self._wake.set()
        return len(rows)
