"""In-process bus for embedded mode and tests: the same semantics as Redis Streams, one process."""

from __future__ import annotations

import asyncio
import time

from app.bus.base import BusEvent

SUBSCRIBER_QUEUE = 10_000


class InMemoryBus:
    """Fan events out to every subscriber of a stream, in publication order.

    Each subscriber has a bounded queue; a full queue makes `publish` wait (backpressure on
    the senders) rather than drop, because the hub consumes without ever awaiting a client.
    """

    def __init__(self) -> None:
        self._subscribers: dict[str, set[asyncio.Queue[BusEvent]]] = {}
        self._counter = 0

    async def connect(self) -> None:
        return None

    async def disconnect(self) -> None:
        for registry in self._subscribers.values():
            for queue in tuple(registry):
                _end(queue)
            registry.clear()

    async def healthy(self) -> bool:
        return True

    async def publish(self, stream: str, event: BusEvent) -> None:
        self._counter += 1
        stamped = BusEvent(
            kind=event.kind,
            data=event.data,
            entry_id=str(self._counter),
            published_at=time.time(),
        )
        for queue in tuple(self._subscribers.get(stream, ())):
            if queue.full():
                await queue.put(stamped)
            else:
                queue.put_nowait(stamped)

    def subscribe(self, stream: str) -> _Subscription:
        """Register at once (not at first iteration), so nothing published after this is missed."""
        return _Subscription(self._subscribers.setdefault(stream, set()))


class _Subscription:
    def __init__(self, registry: set[asyncio.Queue[BusEvent]]) -> None:
        self._registry = registry
        self._queue: asyncio.Queue[BusEvent] = asyncio.Queue(SUBSCRIBER_QUEUE)
        registry.add(self._queue)

    def __aiter__(self) -> _Subscription:
        return self

    async def __anext__(self) -> BusEvent:
        event = await self._queue.get()
        if event is _END:
            self._queue.put_nowait(_END)  # stay ended for any later call
            raise StopAsyncIteration
        return event

    async def aclose(self) -> None:
        """Unsubscribe; a task waiting in `__anext__` ends its iteration."""
        self._registry.discard(self._queue)
        _end(self._queue)


_END = BusEvent(kind="__end__", data={})


def _end(queue: asyncio.Queue[BusEvent]) -> None:
    """Mark a subscriber's queue ended, freeing a publisher blocked on it if it was full."""
    while not queue.empty():
        queue.get_nowait()
    queue.put_nowait(_END)
