"""Pick the bus backend by URL; embedded mode never imports redis."""

from __future__ import annotations

from app.bus.base import Bus
from app.bus.memory import InMemoryBus


def create_bus(url: str | None, *, maxlen: int = 100_000) -> Bus:
    if url is None or url.startswith("memory://"):
        return InMemoryBus()
    if url.startswith(("redis://", "rediss://", "unix://")):
        from app.bus.redis_streams import RedisStreamsBus

        return RedisStreamsBus(url, maxlen=maxlen)
    raise ValueError(f"unsupported bus URL scheme: {url.split(':', 1)[0]}")
