"""In-memory stand-ins for the realtime core's seams: a scripted Transport and a message store."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson

from app.realtime.transport import TransportClosed

Inbound = str | bytes | TransportClosed


class FakeTransport:
    """The Transport protocol over queues.

    Inbound frames are scripted with `feed`/`feed_json`; `disconnect` makes the peer go away.
    Every sent frame is recorded in `sent` (the very str objects the server passed in), and the
    close code in `close_code`. With `blocked=True` (or after `block()`), `send_text` waits
    until `unblock()`: a slow consumer whose socket buffer is full.
    """

    def __init__(self, *, blocked: bool = False) -> None:
        self.inbound: asyncio.Queue[Inbound] = asyncio.Queue()
        self.sent: list[str] = []
        self.close_code: int | None = None
        self.close_reason: str = ""
        self.closed = asyncio.Event()
        self.close_sent = False
        self._gate = asyncio.Event()
        if not blocked:
            self._gate.set()
        self._changed = asyncio.Condition()
        self.send_attempts = 0

    # -- script -----------------------------------------------------------------------------

    def feed(self, frame: str | bytes) -> None:
        self.inbound.put_nowait(frame)

    def feed_json(
        self,
        type: str,
        data: dict[str, Any] | None = None,
        *,
        message_id: str | None = None,
        **extra: Any,
    ) -> None:
        frame: dict[str, Any] = {"type": type, **extra}
        if message_id is not None:
            frame["message_id"] = message_id
        if data is not None:
            frame["data"] = data
        self.feed(orjson.dumps(frame).decode())

    def disconnect(self, code: int = 1001) -> None:
        self.inbound.put_nowait(TransportClosed(code))

    def block(self) -> None:
        self._gate.clear()

    def unblock(self) -> None:
        self._gate.set()

    # -- Transport ---------------------------------------------------------------------------

    async def receive(self) -> str | bytes:
        item = await self.inbound.get()
        if isinstance(item, TransportClosed):
            self.inbound.put_nowait(item)  # a closed socket stays closed
            raise item
        return item

    async def send_text(self, data: str) -> None:
        self.send_attempts += 1
        await self._gate.wait()
        if self.closed.is_set():
            raise TransportClosed(1006)
        self.sent.append(data)
        async with self._changed:
            self._changed.notify_all()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Records the close at once; like uvicorn, the close frame itself waits for a
        writable socket, and only once it is out does the next receive report the
        disconnect."""
        if self.closed.is_set():
            return
        self.close_code = code
        self.close_reason = reason
        self.closed.set()
        async with self._changed:
            self._changed.notify_all()
        await self._gate.wait()
        self.close_sent = True
        self.inbound.put_nowait(TransportClosed(code))

    # -- observation -------------------------------------------------------------------------

    @property
    def frames(self) -> list[dict[str, Any]]:
        return [orjson.loads(text) for text in self.sent]

    def of_type(self, type: str) -> list[dict[str, Any]]:
        return [f for f in self.frames if f["type"] == type]

    async def wait_until(
        self, predicate: Callable[[FakeTransport], bool], timeout: float = 2.0
    ) -> None:
        """Wait (bounded) until `predicate(self)` holds; re-checked after every send/close."""
        async with asyncio.timeout(timeout):
            async with self._changed:
                await self._changed.wait_for(lambda: predicate(self))

    async def wait_sent(self, count: int, timeout: float = 2.0) -> list[str]:
        """Wait until `count` frames were sent; the raw frames."""
        await self.wait_until(lambda t: len(t.sent) >= count, timeout)
        return self.sent

    async def wait_frames(self, count: int, timeout: float = 2.0) -> list[dict[str, Any]]:
        """Wait until `count` frames were sent; all sent frames, parsed."""
        await self.wait_until(lambda t: len(t.sent) >= count, timeout)
        return self.frames

    async def wait_frame(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 2.0
    ) -> dict[str, Any]:
        """The first sent frame matching `predicate`, waiting for it if needed."""
        await self.wait_until(lambda t: any(predicate(f) for f in t.frames), timeout)
        return next(f for f in self.frames if predicate(f))

    async def wait_closed(self, timeout: float = 2.0) -> int | None:
        async with asyncio.timeout(timeout):
            await self.closed.wait()
        return self.close_code


class FakeSocket:
    """An asyncio transport stand-in that records the bytes written to it."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.chunks.append(bytes(data))

    def writelines(self, data: list[bytes]) -> None:
        self.chunks.append(b"".join(data))

    def is_closing(self) -> bool:
        return self.closing


class DirectFake(FakeTransport):
    """FakeTransport (for receive/close) with a direct wire whose writability a test flips."""

    def __init__(self) -> None:
        super().__init__()
        self.socket = FakeSocket()
        self.writable = asyncio.Event()
        self.writable.set()
        self.direct = self
        self.transport = self.socket


def parse_frames(data: bytes) -> list[dict[str, Any]]:
    """Decode unmasked text frames (RFC 6455 §5.2) back to JSON objects."""
    out = []
    i = 0
    while i < len(data):
        assert data[i] == 0x81, "FIN + text opcode"
        n = data[i + 1]
        i += 2
        assert n & 0x80 == 0, "server frames are not masked"
        if n == 126:
            n = int.from_bytes(data[i : i + 2], "big")
            i += 2
        elif n == 127:
            n = int.from_bytes(data[i : i + 8], "big")
            i += 8
        out.append(orjson.loads(data[i : i + n]))
        i += n
    return out


class FakeStore:
    """Stored messages by group, served through a `fetch_after` like the database's.

    `gate` (when set to an unset Event) holds every fetch until it is set, so a test can
    interleave live events with a replay; `calls` records each fetch.
    """

    def __init__(self) -> None:
        self.rows: dict[str, dict[int, dict[str, Any]]] = {}
        self.calls: list[tuple[str, int, int]] = []
        self.gate: asyncio.Event | None = None
        self.fetched = asyncio.Event()

    def add(self, group_id: str, seq: int, **fields: Any) -> dict[str, Any]:
        data = message(group_id, seq, **fields)
        self.rows.setdefault(group_id, {})[seq] = data
        return data

    async def fetch_after(self, group_id: str, after_seq: int, limit: int) -> list[dict[str, Any]]:
        self.calls.append((group_id, after_seq, limit))
        self.fetched.set()
        if self.gate is not None:
            await self.gate.wait()
        rows = self.rows.get(group_id, {})
        return [rows[s] for s in sorted(rows) if s > after_seq][:limit]


def message(group_id: str, seq: int, **fields: Any) -> dict[str, Any]:
    """`new_message` data as the bus carries it."""
    data: dict[str, Any] = {
        "message_id": f"m-{group_id}-{seq}",
        "group_id": group_id,
        "seq": seq,
        "sender_id": "alice",
        "sender_name": "Alice",
        "msg_type": 1,
        "content": f"message {seq}",
        "image_url": "",
        "created_at": 1_764_200_000_000 + seq,
    }
    data.update(fields)
    return data
