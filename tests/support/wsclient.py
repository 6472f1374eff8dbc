"""A test WebSocket client speaking the /ws protocol, on the `websockets` package."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect

_ids = itertools.count(1)


class WsClient:
    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.backlog: list[dict[str, Any]] = []

    @classmethod
    async def open(cls, url: str, **kwargs: Any) -> WsClient:
        kwargs.setdefault("max_size", None)
        kwargs.setdefault("open_timeout", 10)
        return cls(await connect(url, **kwargs))

    async def send(
        self, type: str, data: dict[str, Any] | None = None, *, message_id: str | None = None
    ) -> str:
        message_id = message_id or f"t-{next(_ids)}"
        frame: dict[str, Any] = {
            "type": type,
            "message_id": message_id,
            "timestamp": time.time_ns() // 1_000_000,
        }
        if data is not None:
            frame["data"] = data
        await self.ws.send(orjson.dumps(frame).decode())
        return message_id

    async def recv(self, timeout: float = 10.0) -> dict[str, Any]:
        if self.backlog:
            return self.backlog.pop(0)
        async with asyncio.timeout(timeout):
            raw = await self.ws.recv()
        return orjson.loads(raw)  # type: ignore[no-any-return]

    async def expect(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 10.0
    ) -> dict[str, Any]:
        """The first frame matching `predicate`; frames before it stay in the backlog."""
        for i, frame in enumerate(self.backlog):
            if predicate(frame):
                return self.backlog.pop(i)
        async with asyncio.timeout(timeout):
            while True:
                frame = orjson.loads(await self.ws.recv())
                if predicate(frame):
                    return frame  # type: ignore[no-any-return]
                self.backlog.append(frame)

    async def reply(self, message_id: str, timeout: float = 10.0) -> dict[str, Any]:
        return await self.expect(
            lambda f: f.get("message_id") == message_id and f["type"] != "new_message", timeout
        )

    async def request(
        self, type: str, data: dict[str, Any] | None = None, **kw: Any
    ) -> dict[str, Any]:
        message_id = await self.send(type, data, **kw)
        return await self.reply(message_id)

    async def auth(self, token: str, resume: dict[str, int] | None = None) -> dict[str, Any]:
        data: dict[str, Any] = {"token": token}
        if resume is not None:
            data["resume"] = resume
        return await self.request("auth", data)

    async def messages(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """The next `count` new_message data objects."""
        out = []
        for _ in range(count):
            frame = await self.expect(lambda f: f["type"] == "new_message", timeout)
            out.append(frame["data"])
        return out

    async def close(self) -> None:
        await self.ws.close()

    async def closed_code(self, timeout: float = 10.0) -> int | None:
        """Wait for the server to close; return its close code."""
        async with asyncio.timeout(timeout):
            await self.ws.wait_closed()
        return self.ws.close_code
