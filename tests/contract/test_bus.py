"""One scenario, both bus backends: the in-process bus and Redis Streams on the real Redis."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from app.bus import Bus, BusEvent, create_bus


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
