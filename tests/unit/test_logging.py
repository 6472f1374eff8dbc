"""Log set-up: one line per WebSocket connect/disconnect (the service's own), JSON format."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import orjson
import pytest

from app.logging import configure_logging


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root, uvicorn = logging.getLogger(), logging.getLogger("uvicorn.error")
    saved = root.handlers[:], root.level, uvicorn.filters[:]
    yield
    root.handlers[:], uvicorn.filters[:] = saved[0], saved[2]
    root.setLevel(saved[1])


@pytest.mark.usefixtures("restore_logging")
def test_uvicorn_websocket_lines_are_dropped_and_the_rest_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    captured = io.StringIO()
    monkeypatch.setattr("sys.stderr", captured)  # here: pytest swaps stderr for each phase
    configure_logging(json=True)
    configure_logging(json=True)  # idempotent: one filter, not two
    uvicorn = logging.getLogger("uvicorn.error")
    assert len(uvicorn.filters) == 1
    uvicorn.info('%s - "WebSocket %s" [accepted]', "127.0.0.1:5", "/ws")
    uvicorn.info("connection open")
    uvicorn.info("connection closed")
    uvicorn.info('%s - "WebSocket %s" 403', "127.0.0.1:5", "/ws")
    uvicorn.info("Uvicorn running on %s", "http://127.0.0.1:8889")
    uvicorn.warning("connection closed")
    logging.getLogger("app.realtime").info("[WS] User %s connected from %s", "alice", "10.0.0.1")
    lines = [orjson.loads(line) for line in captured.getvalue().splitlines()]
    assert [(line["level"], line["message"]) for line in lines] == [
        ("INFO", '127.0.0.1:5 - "WebSocket /ws" 403'),
        ("INFO", "Uvicorn running on http://127.0.0.1:8889"),
        ("WARNING", "connection closed"),
        ("INFO", "[WS] User alice connected from 10.0.0.1"),
    ]
