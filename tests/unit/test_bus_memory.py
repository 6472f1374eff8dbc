"""The in-process bus: each subscriber gets every event of its stream, in order, from subscribe."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from app.bus import memory
from app.bus.base import BusEvent
from app.bus.memory import InMemoryBus

STREAM = "chat.message.new"


def event(n: int) -> BusEvent:
    return BusEvent("message", {"n": n})


def registered(bus: InMemoryBus, stream: str = STREAM) -> int:
    return len(bus._subscribers.get(stream, ()))


async def take(subscription: AsyncIterator[BusEvent], count: int) -> list[BusEvent]:
    out: list[BusEvent] = []
    async for item in subscription:
        out.append(item)
        if len(out) == count:
            break
    return out


async def test_every_subscriber_gets_every_event_in_order() -> None:
    bus = InMemoryBus()
    await bus.connect()
    subscriptions = [bus.subscribe(STREAM) for _ in range(4)]
    readers = [asyncio.create_task(take(s, 1000)) for s in subscriptions]
    for n in range(1000):
        await bus.publish(STREAM, event(n))
    async with asyncio.timeout(10):
        results = await asyncio.gather(*readers)
    for received in results:
        assert [e.data["n"] for e in received] == list(range(1000))
        ids = [int(e.entry_id or 0) for e in received]
        assert ids == sorted(ids) and len(set(ids)) == 1000
        assert all(e.kind == "message" and e.published_at is not None for e in received)


async def test_concurrent_publishers_seen_in_the_same_order_by_everyone() -> None:
    bus = InMemoryBus()
    subscriptions = [bus.subscribe(STREAM) for _ in range(3)]
    readers = [asyncio.create_task(take(s, 1000)) for s in subscriptions]

    async def publisher(base: int) -> None:
        for n in range(500):
            await bus.publish(STREAM, event(base + n))
            await asyncio.sleep(0)  # interleave the two publishers

    await asyncio.gather(publisher(0), publisher(10_000))
    async with asyncio.timeout(10):
        first, *others = await asyncio.gather(*readers)
    order = [e.data["n"] for e in first]
    assert sorted(order) == [*range(500), *range(10_000, 10_500)]
    assert order != sorted(order), "the publishers did not interleave"
    for received in others:
        assert [e.data["n"] for e in received] == order
    # Each publisher's own events stay in its order.
    assert [n for n in order if n < 10_000] == list(range(500))


async def test_subscription_is_registered_at_subscribe_time() -> None:
    bus = InMemoryBus()
    subscription = bus.subscribe(STREAM)
    await bus.publish(STREAM, event(1))  # before the first iteration
    await bus.publish(STREAM, event(2))
    async with asyncio.timeout(5):
        got = await take(subscription, 2)
    assert [e.data["n"] for e in got] == [1, 2]


async def test_events_published_before_subscribe_are_not_replayed() -> None:
    bus = InMemoryBus()
    await bus.publish(STREAM, event(0))
    subscription = bus.subscribe(STREAM)
    await bus.publish(STREAM, event(1))
    async with asyncio.timeout(5):
        assert (await anext(subscription)).data == {"n": 1}


async def test_streams_are_separate() -> None:
    bus = InMemoryBus()
    messages = bus.subscribe(STREAM)
    notifications = bus.subscribe("chat.notification.new")
    await bus.publish("chat.notification.new", BusEvent("notification", {"id": "n1"}))
    await bus.publish(STREAM, event(7))
    async with asyncio.timeout(5):
        assert (await anext(messages)).data == {"n": 7}
        assert (await anext(notifications)).data == {"id": "n1"}


async def test_aclose_unsubscribes() -> None:
    bus = InMemoryBus()
    kept = bus.subscribe(STREAM)
    closed = bus.subscribe(STREAM)
    assert registered(bus) == 2
    await closed.aclose()
    assert registered(bus) == 1
    await bus.publish(STREAM, event(1))
    with pytest.raises(StopAsyncIteration):
        await anext(closed)
    async with asyncio.timeout(5):
        assert (await anext(kept)).data == {"n": 1}
    await closed.aclose()  # idempotent
    await kept.aclose()
    assert registered(bus) == 0


async def test_raising_subscriber_leaves_registry_clean() -> None:
    bus = InMemoryBus()
    seen: list[int] = []
    started = asyncio.Event()

    async def consumer() -> None:
        subscription = bus.subscribe(STREAM)
        started.set()
        try:
            async for item in subscription:
                seen.append(item.data["n"])
                if item.data["n"] == 2:
                    raise RuntimeError("handler failed")
        finally:
            await subscription.aclose()

    task = asyncio.create_task(consumer())
    await started.wait()
    assert registered(bus) == 1
    for n in range(1, 4):
        await bus.publish(STREAM, event(n))
    async with asyncio.timeout(5):
        with pytest.raises(RuntimeError, match="handler failed"):
            await task
    assert seen == [1, 2]
    assert registered(bus) == 0


async def test_cancelled_subscriber_leaves_registry_clean() -> None:
    bus = InMemoryBus()
    started = asyncio.Event()

    async def consumer() -> None:
        subscription = bus.subscribe(STREAM)
        started.set()
        try:
            async for _ in subscription:
                pass
        finally:
            await subscription.aclose()

    task = asyncio.create_task(consumer())
    await started.wait()
    assert registered(bus) == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert registered(bus) == 0


async def test_closed_subscriber_does_not_hold_back_publishers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(memory, "SUBSCRIBER_QUEUE", 4)
    bus = InMemoryBus()
    subscription = bus.subscribe(STREAM)
    await subscription.aclose()
    async with asyncio.timeout(5):  # a leaked queue would block on the fifth event
        for n in range(50):
            await bus.publish(STREAM, event(n))


async def test_full_queue_makes_publish_wait_instead_of_dropping(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(memory, "SUBSCRIBER_QUEUE", 4)
    bus = InMemoryBus()
    subscription = bus.subscribe(STREAM)
    for n in range(4):
        await bus.publish(STREAM, event(n))
    blocked = asyncio.create_task(bus.publish(STREAM, event(4)))
    done, _ = await asyncio.wait({blocked}, timeout=0.05)
    assert not done, "publish returned although the subscriber's queue was full"
    async with asyncio.timeout(5):
        got = await take(subscription, 5)
        await blocked
    assert [e.data["n"] for e in got] == [0, 1, 2, 3, 4]


async def test_healthy_and_disconnect() -> None:
    bus = InMemoryBus()
    await bus.connect()
    assert await bus.healthy()
    bus.subscribe(STREAM)
    await bus.disconnect()
    assert registered(bus) == 0


async def test_aclose_from_another_task_ends_a_waiting_iteration() -> None:
    bus = InMemoryBus()
    subscription = bus.subscribe("s")

    async def consume() -> list[BusEvent]:
        return [event async for event in subscription]

    consumer = asyncio.create_task(consume())
    await bus.publish("s", BusEvent("message", {"n": 1}))
    await asyncio.sleep(0)
    await subscription.aclose()
    async with asyncio.timeout(2):
        got = await consumer
    assert [e.data["n"] for e in got] == [1]


async def test_disconnect_ends_every_subscription() -> None:
    bus = InMemoryBus()
    subscriptions = [bus.subscribe("a"), bus.subscribe("b")]
    waiters = [asyncio.create_task(anext(s)) for s in subscriptions]  # type: ignore[arg-type]
    await asyncio.sleep(0)
    await bus.disconnect()
    for waiter in waiters:
        with pytest.raises(StopAsyncIteration):
            async with asyncio.timeout(2):
                await waiter
