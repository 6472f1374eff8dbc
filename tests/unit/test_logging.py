"""Log set-up: one line per WebSocket connect/disconnect (the service's own), JSON format."""

from __future__ import annotations

import contextvars
import io
import logging
from collections.abc import Iterator

import orjson
import pytest

from app.logging import HANDSHAKE_REFUSED, UVICORN_INCOMPLETE_HANDSHAKE, configure_logging


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root, uvicorn = logging.getLogger(), logging.getLogger("uvicorn.error")
    saved = root.handlers[:], root.level, uvicorn.filters[:]
    lookups = logging._srcfile, logging.logThreads, logging.logProcesses
    multiprocessing = logging.logMultiprocessing
    yield
    root.handlers[:], uvicorn.filters[:] = saved[0], saved[2]
    root.setLevel(saved[1])
    logging._srcfile, logging.logThreads, logging.logProcesses = lookups
    logging.logMultiprocessing = multiprocessing


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


@pytest.mark.usefixtures("restore_logging")
def test_records_skip_the_lookups_no_format_shows(monkeypatch: pytest.MonkeyPatch) -> None:
    """No caller frame walk, thread or process lookup per record; the lines and tracebacks
    read the same."""
    captured = io.StringIO()
    monkeypatch.setattr("sys.stderr", captured)
    configure_logging()
    records: list[logging.LogRecord] = []

    class Probe(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logging.getLogger().addHandler(Probe())
    log = logging.getLogger("app.realtime")
    log.info("[WS] User %s connected from %s", "alice", "10.0.0.1")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("[WS] handling a frame on %s failed", "c1")
    assert [(r.lineno, r.funcName, r.thread, r.process) for r in records] == [
        (0, "(unknown function)", None, None)
    ] * 2
    lines = captured.getvalue().splitlines()
    assert lines[0].endswith(" INFO app.realtime [WS] User alice connected from 10.0.0.1")
    assert lines[1].endswith(" ERROR app.realtime [WS] handling a frame on c1 failed")
    assert lines[2] == "Traceback (most recent call last):" and lines[-1] == "ValueError: boom"


@pytest.mark.usefixtures("restore_logging")
def test_unfinished_handshake_error_dropped_only_after_a_refusal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    captured = io.StringIO()
    monkeypatch.setattr("sys.stderr", captured)
    configure_logging(json=True)
    uvicorn = logging.getLogger("uvicorn.error")

    def refused() -> None:
        HANDSHAKE_REFUSED.set(True)
        uvicorn.error(UVICORN_INCOMPLETE_HANDSHAKE)

    contextvars.copy_context().run(refused)  # one connection's task: it refused
    uvicorn.error(UVICORN_INCOMPLETE_HANDSHAKE)  # another's: an app that really failed
    lines = [orjson.loads(line) for line in captured.getvalue().splitlines()]
    assert [(line["level"], line["message"]) for line in lines] == [
        ("ERROR", UVICORN_INCOMPLETE_HANDSHAKE)
    ]
