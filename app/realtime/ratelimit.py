"""Per-user token bucket for sends (SPEC §11: 10 per second, burst 20)."""

from __future__ import annotations

import math
import time


class TokenBuckets:
    """One bucket per key, refilled lazily; idle full buckets are pruned as they are met."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._buckets: dict[str, tuple[float, float]] = {}

    def allow(self, key: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        tokens, stamp = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - stamp) * self.rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return False
        self._buckets[key] = (tokens - 1.0, now)
        if len(self._buckets) > 100_000:
            self._prune(now)
        return True

    def _prune(self, now: float) -> None:
        full = [k for k, (t, s) in self._buckets.items() if t + (now - s) * self.rate >= self.burst]
        for key in full:
            del self._buckets[key]


class WindowCounter:
    """Fixed one-minute windows per key (handshakes per IP per minute)."""

    def __init__(self, limit: int, window: float = 60.0) -> None:
        self.limit = limit
        self.window = window
        self._counts: dict[str, int] = {}
        self._started = time.monotonic()

    def allow(self, key: str) -> bool:
        now = time.monotonic()
        if now - self._started >= self.window:
            self._counts.clear()
            self._started = now
        count = self._counts.get(key, 0) + 1
        self._counts[key] = count
        return count <= self.limit

    def retry_after(self) -> int:
        """Whole seconds until the current window ends and every key may try again."""
        return max(1, math.ceil(self.window - (time.monotonic() - self._started)))
