"""The transport seam: what the realtime core needs from a WebSocket, and nothing more."""

from __future__ import annotations

import asyncio
from typing import Protocol


class TransportClosed(Exception):
    """The peer went away (or the socket is already closed)."""

    def __init__(self, code: int = 1006) -> None:
        self.code = code
        super().__init__(f"transport closed ({code})")


class DirectWire(Protocol):
    """A socket that takes pre-built frames synchronously (the fan-out fast path)."""

    transport: asyncio.Transport
    writable: asyncio.Event  # cleared while the socket's buffer is over its high-water mark


class Transport(Protocol):
    async def receive(self) -> str | bytes:
        """Next text or binary frame; raises TransportClosed on disconnect."""
        ...

    async def send_text(self, data: str) -> None:
        """Send one text frame; raises TransportClosed when the socket is gone."""
        ...

    async def close(self, code: int = 1000, reason: str = "") -> None: ...
