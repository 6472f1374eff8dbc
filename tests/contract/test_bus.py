"""One scenario, both bus backends: the in-process bus and Redis Streams on the real Redis."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import orjson
import pytest
import redis.asyncio as redis

from app.bus import Bus, BusEvent, create_bus
from app.bus.redis_streams import RedisStreamsBus
from app.errors import Unavailable


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def bus(request: pytest.FixtureRequest) -> AsyncIterator[Bus]:
    url = None if request.param == "memory" else request.getfixturevalue("redis_url")
    instance = create_bus(url, maxlen=1000)
    await instance.connect()
    yield instance
    await instance.disconnect()


async def collect(bus: Bus, stream: str, count: int, ready: asyncio.Event) -> list[BusEvent]:
    subscription = bus.subscribe(stream)
    ready.set()
    out: list[BusEvent] = []
    async with asyncio.timeout(10):
        async for event in subscription:
            if event.kind == "canary":
                continue
            out.append(event)
            if len(out) == count:
                break
    return out


async def test_every_subscriber_gets_every_event_in_order(bus: Bus) -> None:
    stream = f"test.{uuid.uuid4().hex[:8]}"
    readies = [asyncio.Event() for _ in range(3)]
    readers = [asyncio.create_task(collect(bus, stream, 200, r)) for r in readies]
    for ready in readies:
        await ready.wait()
    await asyncio.sleep(0)  # let each reader reach its first read
    for i in range(200):
        await bus.publish(stream, BusEvent("message", {"i": i, "text": "héllo"}))
    results = await asyncio.gather(*readers)
    for events in results:
        assert [e.data["i"] for e in events] == list(range(200))
        assert all(e.kind == "message" and e.data["text"] == "héllo" for e in events)
        assert all(e.published_at is not None and e.entry_id for e in events)


async def test_streams_are_separate(bus: Bus) -> None:
    a, b = f"test.a.{uuid.uuid4().hex[:6]}", f"test.b.{uuid.uuid4().hex[:6]}"
    ready = asyncio.Event()
    reader = asyncio.create_task(collect(bus, a, 2, ready))
    await ready.wait()
    await asyncio.sleep(0)
    await bus.publish(b, BusEvent("message", {"n": "b"}))
    await bus.publish(a, BusEvent("message", {"n": 1}))
    await bus.publish(a, BusEvent("message", {"n": 2}))
    assert [e.data["n"] for e in await reader] == [1, 2]


async def test_healthy(bus: Bus) -> None:
    assert await bus.healthy() is True


async def test_a_burst_of_concurrent_publishes_waits_for_connections(bus: Bus) -> None:
    """More publishes at once than the client's pool holds: they queue, none fails."""
    stream = f"test.burst.{uuid.uuid4().hex[:6]}"
    ready = asyncio.Event()
    reader = asyncio.create_task(collect(bus, stream, 300, ready))
    await ready.wait()
    await asyncio.sleep(0)
    await asyncio.gather(*(bus.publish(stream, BusEvent("message", {"i": i})) for i in range(300)))
    assert sorted(e.data["i"] for e in await reader) == list(range(300))


# -- Redis only: the pipelined publisher ----------------------------------------------------


@pytest.fixture
async def streams_bus(redis_url: str) -> AsyncIterator[RedisStreamsBus]:
    bus = RedisStreamsBus(redis_url, maxlen=10_000)
    await bus.connect()
    yield bus
    await bus.disconnect()


@pytest.mark.redis
async def test_concurrent_publishers_keep_each_ones_order(streams_bus: RedisStreamsBus) -> None:
    """Publishes queued while a batch is in flight leave together, in the order they came."""
    bus = streams_bus
    stream = f"test.order.{uuid.uuid4().hex[:6]}"
    ready = asyncio.Event()
    reader = asyncio.create_task(collect(bus, stream, 400, ready))
    await ready.wait()
    await asyncio.sleep(0)

    async def sender(name: str) -> None:
        for i in range(100):
            await bus.publish(stream, BusEvent("message", {"s": name, "i": i}))

    await asyncio.gather(*(sender(n) for n in "abc"))
    await bus.publish_many([(stream, BusEvent("message", {"s": "d", "i": i})) for i in range(100)])
    events = await reader
    for name in "abcd":
        assert [e.data["i"] for e in events if e.data["s"] == name] == list(range(100))


@pytest.mark.redis
async def test_publisher_outage_is_unavailable_and_the_next_publish_reconnects(
    redis_url: str,
) -> None:
    from tests.support.faults import TcpProxy

    port = urlsplit(redis_url).port or 6379
    proxy = await TcpProxy("127.0.0.1", port).start()
    url = redis_url.replace(f":{port}", f":{proxy.port}", 1)
    bus = RedisStreamsBus(url, maxlen=1000)
    await bus.connect()
    stream = f"test.outage.{uuid.uuid4().hex[:6]}"
    try:
        await bus.publish(stream, BusEvent("message", {"i": 1}))
        await proxy.cut()
        async with asyncio.timeout(10):  # fails within the publish timeout, never hangs
            results = await asyncio.gather(
                *(bus.publish(stream, BusEvent("message", {"i": i})) for i in range(5)),
                return_exceptions=True,
            )
        assert all(isinstance(r, Unavailable) for r in results), results
        await proxy.restore()
        await bus.publish(stream, BusEvent("message", {"i": 2}))
        direct = redis.from_url(redis_url)
        entries = await direct.xrange(stream)
        await direct.aclose()
        assert [orjson.loads(fields[b"d"])["i"] for _, fields in entries] == [1, 2]
    finally:
        await bus.disconnect()
        await proxy.close()


@pytest.mark.redis
async def test_an_error_reply_fails_only_its_own_command(streams_bus: RedisStreamsBus) -> None:
    bus = streams_bus
    key = f"test.notastream.{uuid.uuid4().hex[:6]}"
    await bus.client.set(key, "x")  # XADD to a string key: WRONGTYPE
    good = f"test.good.{uuid.uuid4().hex[:6]}"
    results = await asyncio.gather(
        bus.publish(key, BusEvent("message", {"i": 0})),
        bus.publish(good, BusEvent("message", {"i": 1})),
        return_exceptions=True,
    )
    assert isinstance(results[0], Unavailable) and results[1] is None
    assert await bus.client.xlen(good) == 1
    await bus.client.delete(key)


@pytest.mark.redis
@pytest.mark.parametrize("protocol", [2, 3])
async def test_stream_reads_parse_both_reply_protocols(redis_url: str, protocol: int) -> None:
    """The reader parses XREAD replies itself: RESP3 maps and RESP2 lists alike."""
    sep = "&" if "?" in redis_url else "?"
    bus = RedisStreamsBus(f"{redis_url}{sep}protocol={protocol}", maxlen=1000)
    await bus.connect()
    try:
        stream = f"test.resp{protocol}.{uuid.uuid4().hex[:6]}"
        ready = asyncio.Event()
        reader = asyncio.create_task(collect(bus, stream, 3, ready))
        await ready.wait()
        await asyncio.sleep(0)
        for i in range(3):
            await bus.publish(stream, BusEvent("message", {"i": i, "t": "ü"}))
        assert [(e.kind, e.data) for e in await reader] == [
            ("message", {"i": i, "t": "ü"}) for i in range(3)
        ]
    finally:
        await bus.disconnect()
