"""Redis Streams bus: XADD MAXLEN ~ N; every instance XREADs every entry from its own last id."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import redis.asyncio as redis
from redis.exceptions import RedisError

from app.bus.base import BusEvent
from app.errors import Unavailable

log = logging.getLogger("app.bus.redis")

BLOCK_MS = 2000
READ_COUNT = 1000
BACKOFF_START = 0.1
BACKOFF_CAP = 5.0
START_MARGIN_MS = 50


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def blocking_pool(url: str, *, max_connections: int = 64) -> redis.BlockingConnectionPool:
    """A pool that makes a burst of commands wait for a connection (at most 2 s) instead of
    failing at once (redis-py's default pool raises MaxConnectionsError past its limit)."""
    return redis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=2,
        socket_timeout=2,
        socket_connect_timeout=2,
        health_check_interval=10,
    )


def entry_time(entry_id: str) -> float:
    """Unix seconds of a stream entry id (`<ms>-<n>`)."""
    return int(entry_id.split("-", 1)[0]) / 1000.0


class RedisStreamsBus:
    """Not a consumer group: a group would hand each entry to one instance only, and every
    instance must see every entry. Each subscription keeps its own last id, so after an outage
    it reconnects with capped backoff and continues exactly where it stopped."""

    def __init__(self, url: str, *, maxlen: int = 100_000, block_ms: int = BLOCK_MS) -> None:
        self.url = url
        self.maxlen = maxlen
        self.block_ms = block_ms
        self._client: redis.Redis | None = None
        self._readers: list[redis.Redis] = []
        self._clock_offset_ms = 0

    async def connect(self) -> None:
        # Short timeouts: a publish during an outage fails fast (503), it never hangs.
        self._client = redis.Redis(connection_pool=blocking_pool(self.url))
        try:
            seconds, micros = await self._client.time()
            self._clock_offset_ms = seconds * 1000 + micros // 1000 - now_ms()
        except (RedisError, OSError):
            self._clock_offset_ms = 0  # Redis is down at start: assume the clocks agree

    async def disconnect(self) -> None:
        for client in [*self._readers, *([self._client] if self._client else [])]:
            try:
                await client.aclose()
            except Exception:
                pass
        self._readers.clear()
        self._client = None

    @property
    def client(self) -> redis.Redis:
        if self._client is None:
            raise RuntimeError("bus not connected")
        return self._client

    async def healthy(self) -> bool:
        try:
            return bool(await self.client.ping())
        except (RedisError, OSError):
            return False

    async def publish(self, stream: str, event: BusEvent) -> None:
        fields = {"k": event.kind, "d": orjson.dumps(event.data)}
        try:
            await self.client.xadd(stream, fields, maxlen=self.maxlen, approximate=True)  # type: ignore[arg-type]
        except (RedisError, OSError) as exc:
            raise Unavailable("bus unavailable, retry later") from exc

    async def publish_many(self, items: list[tuple[str, BusEvent]]) -> None:
        """Several entries in one round trip (a pipeline), in order."""
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for stream, event in items:
                    fields = {"k": event.kind, "d": orjson.dumps(event.data)}
                    pipe.xadd(stream, fields, maxlen=self.maxlen, approximate=True)  # type: ignore[arg-type]
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise Unavailable("bus unavailable, retry later") from exc

    def subscribe(self, stream: str) -> AsyncIterator[BusEvent]:
        """Every entry from the moment of this call: entry ids are Redis timestamps, so the
        subscription starts from Redis's clock now (minus a small margin: a few entries from
        just before may come twice, which every consumer tolerates, but none is missed)."""
        reader = redis.Redis.from_url(
            self.url, socket_timeout=self.block_ms / 1000 + 5, socket_connect_timeout=2
        )
        self._readers.append(reader)
        start = max(0, now_ms() + self._clock_offset_ms - START_MARGIN_MS)
        return self._read(reader, stream, f"{start}-0")

    async def _read(
        self, reader: redis.Redis, stream: str, last_id: str
    ) -> AsyncIterator[BusEvent]:
        backoff = BACKOFF_START
        try:
            while True:
                try:
                    response: Any = await reader.xread(
                        {stream: last_id}, count=READ_COUNT, block=self.block_ms
                    )
                    backoff = BACKOFF_START
                except (RedisError, OSError) as exc:
                    log.warning(
                        "[WS] stream %s read failed (%s); retrying in %.1fs from %s",
                        stream,
                        exc.__class__.__name__,
                        backoff,
                        last_id,
                    )
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, BACKOFF_CAP)
                    continue
                for _name, entries in response or ():
                    for raw_id, fields in entries:
                        entry_id = raw_id.decode()
                        last_id = entry_id
                        try:
                            event = BusEvent(
                                kind=fields[b"k"].decode(),
                                data=orjson.loads(fields[b"d"]),
                                entry_id=entry_id,
                                published_at=entry_time(entry_id),
                            )
                        except (KeyError, ValueError, UnicodeDecodeError):
                            log.warning("[WS] malformed entry %s on %s dropped", entry_id, stream)
                            continue
                        yield event
        finally:
            if reader in self._readers:
                self._readers.remove(reader)
            try:
                await reader.aclose()
            except Exception:
                pass
