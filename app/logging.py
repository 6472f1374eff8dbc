"""Log setup: plain lines by default, one JSON object per line with LOG_FORMAT=json."""

from __future__ import annotations

import logging
import sys
from contextvars import ContextVar
from typing import Any

import orjson

_RESERVED = set(vars(logging.makeLogRecord({})))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


# uvicorn's own lines for every WebSocket: the service logs each connect and disconnect once
# itself, with the user and the close code (seed §8.2), so these only repeated them.
UVICORN_WS_LINES = frozenset(
    {'%s - "WebSocket %s" [accepted]', "connection open", "connection closed"}
)


# Set by the /ws endpoint when it refuses a handshake with an HTTP response (403, 429, 503), in
# the task that runs the connection. uvicorn's websockets-sansio protocol (0.54) does not count
# a refusal as a finished handshake, so after each one it logs "ASGI callable returned without
# completing handshake." at ERROR (uvicorn PR #3138): a connection storm from one address made
# one ERROR line per refused attempt. The refusal itself stays logged, at INFO, by uvicorn.
HANDSHAKE_REFUSED: ContextVar[bool] = ContextVar("handshake_refused", default=False)
UVICORN_INCOMPLETE_HANDSHAKE = "ASGI callable returned without completing handshake."


class UvicornWebSocketLines(logging.Filter):
    """Drops uvicorn's per-WebSocket INFO lines, and its ERROR about an unfinished handshake
    when the endpoint refused that handshake itself (other refusals and errors still pass)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.INFO:
            return record.msg not in UVICORN_WS_LINES
        return not (record.msg == UVICORN_INCOMPLETE_HANDSHAKE and HANDSHAKE_REFUSED.get())


def configure_logging(*, json: bool = False, level: str = "INFO") -> None:
    # Neither format shows where a line was logged from, or the thread and process: skip
    # looking them up for every record, as the logging HOWTO's "Optimization" section
    # describes (~5 us per record; uvicorn makes one per WebSocket that the filter drops).
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    if json:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    uvicorn_error = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, UvicornWebSocketLines) for f in uvicorn_error.filters):
        uvicorn_error.addFilter(UvicornWebSocketLines())
