"""The direct path on uvicorn's `websockets-sansio` connections (the fan-out fast path).

The hub builds every pushed frame's wire bytes once (server frames are unmasked, so they are
the same for every recipient) and a connection writes them straight into its socket's buffer,
skipping uvicorn's per-message ASGI `websocket.send` (an awaited call, a framing pass and a
write per recipient). This reaches into uvicorn's protocol object, so it is pinned: used only
with the uvicorn versions below and only when the object has what it needs; anything else,
and `WS_DIRECT_WRITES=false`, takes the plain ASGI path.
"""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from typing import Any

from app.realtime.transport import DirectWire

SUPPORTED_UVICORN = ((0, 30), (0, 60))  # [from, to): the sansio protocol as read for 0.54
PROTOCOL = ("uvicorn.protocols.websockets.websockets_sansio_impl", "WebSocketsSansIOProtocol")


def uvicorn_supported() -> bool:
    """Whether the installed uvicorn is one whose internals this module was read against."""
    import uvicorn

    try:
        version = tuple(int(part) for part in uvicorn.__version__.split(".")[:2])
    except ValueError:
        return False
    low, high = SUPPORTED_UVICORN
    return low <= version < high


def direct_wire(receive: Any) -> DirectWire | None:
    """uvicorn's protocol object behind this connection's `receive`, when it can be trusted
    with direct writes: it owns the asyncio transport and the `writable` flow-control event."""
    proto = getattr(receive, "__self__", None)
    kind = type(proto)
    if proto is None or (kind.__module__, kind.__name__) != PROTOCOL:
        return None
    if not uvicorn_supported():
        return None
    transport = getattr(proto, "transport", None)
    writable = getattr(proto, "writable", None)
    if transport is None or writable is None or not hasattr(transport, "write"):
        return None
    return proto  # type: ignore[no-any-return]


def shed_handshake(wire: DirectWire | None, scope: MutableMapping[str, Any]) -> None:
    """After the accept, let go of what only the handshake needed: uvicorn's parsed request
    and prepared response (their header maps), the scope's header list, read once for the
    origin and client checks, and the scope's copy of the app state; and its receive queue
    becomes a LeanQueue. About 9 KB per idle connection. Only on the pinned protocol, i.e.
    when `direct_wire` vouched for it."""
    if wire is None:
        return
    headers = getattr(getattr(wire, "request", None), "headers", None)
    if headers is not None and hasattr(headers, "clear"):
        # websockets' ServerProtocol.parse keeps the handshake request as a local of its
        # generator for the connection's life: empty its header map (~2.5 KB with its strings).
        headers.clear()
    for name in ("request", "response"):
        if hasattr(wire, name):
            setattr(wire, name, None)
    scope["headers"] = []
    scope.pop("state", None)
    queue = getattr(wire, "queue", None)
    if isinstance(queue, asyncio.Queue):
        wire.queue = LeanQueue.taking_over(queue)  # type: ignore[attr-defined]


class LeanQueue:
    """What uvicorn's protocol uses of its receive queue (`put_nowait`, `get`, `empty`), for
    one reader, without asyncio.Queue's three deques and event (~3 KB per connection: a
    deque allocates a 64-slot block even when empty). uvicorn pauses reading while a
    message waits, so the list holds a few items at most."""

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: list[Any] = []
        self._waiter: asyncio.Future[None] | None = None

    @classmethod
    def taking_over(cls, queue: asyncio.Queue[Any]) -> LeanQueue:
        """A lean queue with what `queue` holds; nobody may be waiting on `queue`."""
        lean = cls()
        while not queue.empty():
            lean._items.append(queue.get_nowait())
        return lean

    def put_nowait(self, item: Any) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def empty(self) -> bool:
        return not self._items

    def qsize(self) -> int:
        return len(self._items)

    async def get(self) -> Any:
        while not self._items:
            if self._waiter is not None:
                raise RuntimeError("LeanQueue has one reader")
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.pop(0)
