"""The bus contract: every instance's hub receives every event published by any instance."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class BusEvent:
    """One event on a stream.

    Attributes:
        kind: "message", "notification", "membership" or "read".
        data: JSON-compatible payload (see app.schemas.events).
        entry_id: the backend's id of the entry (Redis stream id), if any.
        published_at: Unix seconds when the entry entered the bus (for fan-out lag).
    """

    kind: str
    data: dict[str, Any]
    entry_id: str | None = None
    published_at: float | None = field(default=None, compare=False)


class Bus(Protocol):
    async def connect(self) -> None: ...

    async def disconnect(self) -> None: ...

    async def publish(self, stream: str, event: BusEvent) -> None:
        """Append `event` to `stream`; raises app.errors.Unavailable when the bus is down."""
        ...

    def subscribe(self, stream: str) -> AsyncIterator[BusEvent]:
        """Yield every event published to `stream` from now on, in publication order."""
        ...

    async def healthy(self) -> bool: ...
