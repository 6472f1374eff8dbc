"""Redis Streams bus: XADD MAXLEN ~ N; every instance XREADs every entry from its own last id."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import redis.asyncio as redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import RedisError, ResponseError

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


PUBLISH_TIMEOUT = 2.0

Command = tuple[Any, ...]


class PipelinedConnection:
    """Commands from every caller go out on one connection, pipelined: whatever queued up
    while a batch was in flight leaves in the next one, in order, as one write. The bus's
    XADDs and presence's scripts use it.

    redis-py's client path costs ~0.25 ms of CPU per command (pool checkout, retry wrapper,
    observability hooks, response callbacks): more than storing the message in Postgres.
    Here a command is packed, written and its reply read on a plain redis-py Connection.
    A connection error or timeout fails the whole batch (Unavailable) and the next batch
    reconnects; an error reply fails its own command only.
    """

    def __init__(self, url: str, *, timeout: float = PUBLISH_TIMEOUT) -> None:
        self.url = url
        self.timeout = timeout
        self._conn: AbstractConnection | None = None
        self._queue: list[tuple[Command, asyncio.Future[Any]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def execute(self, *commands: Command) -> list[Any]:
        """Run the commands (in this order, after those already queued); their replies."""
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in commands]
        self._queue.extend(zip(commands, futures, strict=True))
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._run(), name="redis-pipeline")
        if len(futures) == 1:
            return [await futures[0]]
        return list(await asyncio.gather(*futures))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        for _, future in self._queue:
            if not future.done():
                future.set_exception(Unavailable("redis connection closed"))
        self._queue.clear()
        await self._drop()

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.disconnect()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                batch, self._queue = self._queue, []
                await self._send(batch)

    async def _send(self, batch: list[tuple[Command, asyncio.Future[Any]]]) -> None:
        done = 0
        try:
            async with asyncio.timeout(self.timeout):
                if self._conn is None:
                    conn = _connection(self.url, self.timeout)
                    await conn.connect()  # type: ignore[no-untyped-call]
                    self._conn = conn
                conn = self._conn
                await conn.send_packed_command(conn.pack_commands([c for c, _ in batch]))
                for _, future in batch:
                    try:
                        reply: Any = await conn.read_response()
                    except ResponseError as exc:
                        reply = exc
                    done += 1
                    if future.done():
                        continue
                    if isinstance(reply, ResponseError):
                        future.set_exception(Unavailable(f"redis refused the command: {reply}"))
                    else:
                        future.set_result(reply)
        except (RedisError, OSError, TimeoutError, asyncio.CancelledError) as exc:
            await self._drop()
            for _, future in batch[done:]:
                if not future.done():
                    error = Unavailable("redis unavailable, retry later")
                    error.__cause__ = exc
                    future.set_exception(error)
            if isinstance(exc, asyncio.CancelledError):
                raise


def _connection(url: str, timeout: float) -> AbstractConnection:
    """A plain connection (TLS for rediss://) with the URL's host, port, db and credentials."""
    pool = redis.ConnectionPool.from_url(
        url, socket_timeout=timeout, socket_connect_timeout=timeout
    )
    return pool.connection_class(**pool.connection_kwargs)


class RedisStreamsBus:
    """Not a consumer group: a group would hand each entry to one instance only, and every
    instance must see every entry. Each subscription keeps its own last id, so after an outage
    it reconnects with capped backoff and continues exactly where it stopped."""

    def __init__(self, url: str, *, maxlen: int = 100_000, block_ms: int = BLOCK_MS) -> None:
        self.url = url
        self.maxlen = maxlen
        self.block_ms = block_ms
        self._client: redis.Redis | None = None
        self._readers: list[AbstractConnection] = []
        self._clock_offset_ms = 0
        self._publisher: PipelinedConnection | None = None

    async def connect(self) -> None:
        # Short timeouts: a publish during an outage fails fast (503), it never hangs.
        self._client = redis.Redis(connection_pool=blocking_pool(self.url))
        self._publisher = PipelinedConnection(self.url)
        try:
            seconds, micros = await self._client.time()
            self._clock_offset_ms = seconds * 1000 + micros // 1000 - now_ms()
        except (RedisError, OSError):
            self._clock_offset_ms = 0  # Redis is down at start: assume the clocks agree

    async def disconnect(self) -> None:
        if self._publisher is not None:
            await self._publisher.close()
            self._publisher = None
        for reader in self._readers:
            with contextlib.suppress(Exception):
                await reader.disconnect()
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.aclose()
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

    def _xadd(self, stream: str, event: BusEvent) -> Command:
        return (
            "XADD", stream, "MAXLEN", "~", self.maxlen, "*",
            "k", event.kind, "d", orjson.dumps(event.data),
        )  # fmt: skip

    @property
    def publisher(self) -> PipelinedConnection:
        if self._publisher is None:
            raise RuntimeError("bus not connected")
        return self._publisher

    async def publish(self, stream: str, event: BusEvent) -> None:
        await self.publisher.execute(self._xadd(stream, event))

    async def publish_many(self, items: list[tuple[str, BusEvent]]) -> None:
        """Several entries, in order, in one write."""
        await self.publisher.execute(*(self._xadd(stream, event) for stream, event in items))

    def subscribe(self, stream: str) -> AsyncIterator[BusEvent]:
        """Every entry from the moment of this call: entry ids are Redis timestamps, so the
        subscription starts from Redis's clock now (minus a small margin: a few entries from
        just before may come twice, which every consumer tolerates, but none is missed).

        Each subscription reads on a connection of its own (a blocking XREAD holds it), with
        the command written and the reply read directly, like the publisher's."""
        reader = _connection(self.url, self.block_ms / 1000 + 5)
        self._readers.append(reader)
        start = max(0, now_ms() + self._clock_offset_ms - START_MARGIN_MS)
        return self._read(reader, stream, f"{start}-0")

    async def _read(
        self, reader: AbstractConnection, stream: str, last_id: str
    ) -> AsyncIterator[BusEvent]:
        backoff = BACKOFF_START
        try:
            while True:
                try:
                    await reader.send_command(
                        "XREAD", "COUNT", READ_COUNT, "BLOCK", self.block_ms,
                        "STREAMS", stream, last_id,
                    )  # fmt: skip
                    response: Any = await reader.read_response()
                    backoff = BACKOFF_START
                except (RedisError, OSError, TimeoutError) as exc:
                    with contextlib.suppress(Exception):
                        await reader.disconnect()
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
                # RESP3 answers a map {stream: entries}, RESP2 a list of [stream, entries].
                replies = response.items() if isinstance(response, dict) else response or ()
                for _name, entries in replies:
                    for raw_id, flat in entries:
                        entry_id = raw_id.decode()
                        last_id = entry_id
                        try:
                            fields = dict(zip(flat[::2], flat[1::2], strict=True))
                            event = BusEvent(
                                kind=fields[b"k"].decode(),
                                data=orjson.loads(fields[b"d"]),
                                entry_id=entry_id,
                                published_at=entry_time(entry_id),
                            )
                        except (KeyError, ValueError, TypeError, UnicodeDecodeError):
                            log.warning("[WS] malformed entry %s on %s dropped", entry_id, stream)
                            continue
                        yield event
        finally:
            if reader in self._readers:
                self._readers.remove(reader)
            with contextlib.suppress(Exception):
                await reader.disconnect()
