"""The per-IP handshake window and when it tells a refused client to come back."""

from __future__ import annotations

import pytest

from app.realtime import ratelimit
from app.realtime.ratelimit import WindowCounter


def test_window_counts_per_key_and_says_when_it_frees(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(ratelimit.time, "monotonic", lambda: now[0])
    window = WindowCounter(2, window=60.0)
    assert window.allow("a") and window.allow("a") and not window.allow("a")
    assert window.allow("b"), "another address has its own count"
    now[0] += 45.2
    assert window.retry_after() == 15
    now[0] += 14.7
    assert window.retry_after() == 1, "never 0: the client must wait for the new window"
    now[0] += 0.2
    assert window.allow("a"), "a new window"
    assert window.retry_after() == 60
