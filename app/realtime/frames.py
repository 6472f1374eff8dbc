"""Server frames of SPEC §3.3, encoded once with orjson; envelope parsing of client frames."""

from __future__ import annotations

import re
import time
from typing import Any

import orjson

from app.errors import BadRequest

CLIENT_TYPES = frozenset(
    {"ping", "auth", "send_message", "join_group", "leave_group", "mark_read", "sync"}
)
MAX_MESSAGE_ID = 64
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def text_frame(payload: bytes) -> bytes:
    """One unfragmented, unmasked text frame (RFC 6455 §5.2) carrying `payload`."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return b"\x81\x7e" + n.to_bytes(2, "big") + payload
    return b"\x81\x7f" + n.to_bytes(8, "big") + payload


class Frame:
    """A frame pushed to many connections, encoded once: its JSON text (for the ASGI path)
    and its wire bytes (for the direct path). A server-to-client frame is not masked, so the
    bytes are the same for every recipient."""

    __slots__ = ("text", "wire")

    def __init__(self, payload: bytes) -> None:
        self.text = payload.decode()
        self.wire = text_frame(payload)

    def __repr__(self) -> str:
        return f"Frame({self.text[:60]!r})"


Outgoing = str | Frame  # a one-off reply (str) or a shared push (Frame)


def wire_of(frame: Outgoing) -> bytes:
    return frame.wire if isinstance(frame, Frame) else text_frame(frame.encode())


def text_of(frame: Outgoing) -> str:
    return frame.text if isinstance(frame, Frame) else frame


def _envelope(
    type: str, data: dict[str, Any], message_id: str | None, timestamp: int | None
) -> bytes:
    frame: dict[str, Any] = {"type": type}
    if message_id is not None:
        frame["message_id"] = message_id
    frame["timestamp"] = now_ms() if timestamp is None else timestamp
    frame["data"] = data
    return orjson.dumps(frame)


def encode(
    type: str, data: dict[str, Any], *, message_id: str | None = None, timestamp: int | None = None
) -> str:
    """A reply to one connection."""
    return _envelope(type, data, message_id, timestamp).decode()


def shared(
    type: str, data: dict[str, Any], *, message_id: str | None = None, timestamp: int | None = None
) -> Frame:
    """A frame pushed to many connections: encoded and framed once."""
    return Frame(_envelope(type, data, message_id, timestamp))


def new_message(data: dict[str, Any]) -> Frame:
    return shared("new_message", data, message_id=data["message_id"], timestamp=data["created_at"])


def notification(data: dict[str, Any]) -> Frame:
    return shared(
        "notification", data, message_id=data["notification_id"], timestamp=data["created_at"]
    )


def error(code: int, message: str, *, message_id: str | None = None) -> str:
    return encode("error", {"code": code, "message": message}, message_id=message_id)


class ClientFrame:
    """A parsed client frame: the envelope of SPEC §3.1, checked strictly (SPEC §11)."""

    __slots__ = ("data", "message_id", "timestamp", "type")

    def __init__(
        self, type: str, message_id: str | None, timestamp: int | None, data: dict[str, Any]
    ):
        self.type = type
        self.message_id = message_id
        self.timestamp = timestamp
        self.data = data


def parse(text: str) -> ClientFrame:
    """Parse one text frame; raises BadRequest (with the message_id when it is readable)."""
    try:
        raw = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise BadRequest("malformed JSON") from exc
    if not isinstance(raw, dict):
        raise BadRequest("a frame must be one JSON object")
    message_id = raw.get("message_id")
    if message_id is not None and (
        not isinstance(message_id, str) or not message_id or len(message_id) > MAX_MESSAGE_ID
    ):
        raise BadRequest(f"message_id must be a non-empty string of at most {MAX_MESSAGE_ID} chars")
    if message_id is not None and not message_id.isprintable() and _CONTROL.search(message_id):
        # It becomes the stored idempotency key of send_message: Postgres cannot hold NUL.
        raise BadRequest("message_id must not contain control characters")
    kind = raw.get("type")
    if not isinstance(kind, str):
        raise FrameError("type must be a string", message_id)
    if kind not in CLIENT_TYPES:
        raise FrameError(f"unknown type {kind[:40]!r}", message_id)
    timestamp = raw.get("timestamp")
    if timestamp is not None and (isinstance(timestamp, bool) or not isinstance(timestamp, int)):
        raise FrameError("timestamp must be an integer (Unix milliseconds)", message_id)
    data = raw.get("data")
    if data is None:
        data = {}
    elif not isinstance(data, dict):
        raise FrameError("data must be a JSON object", message_id)
    return ClientFrame(kind, message_id, timestamp, data)


class FrameError(BadRequest):
    """A 400 that still knows the frame's message_id, so the error can be correlated."""

    def __init__(self, message: str, message_id: str | None) -> None:
        super().__init__(message)
        self.message_id = message_id


def field_str(data: dict[str, Any], name: str, *, max_len: int = 64) -> str:
    """An id field: ids never hold control characters (Postgres cannot even store NUL, and
    looking one up would fail with a 500 instead of this 400)."""
    value = data.get(name)
    if not isinstance(value, str) or not value or len(value) > max_len:
        raise BadRequest(f"{name} must be a non-empty string of at most {max_len} characters")
    if not value.isprintable() and _CONTROL.search(value):
        raise BadRequest(f"{name} must not contain control characters")
    return value


def field_int(
    data: dict[str, Any], name: str, *, default: int | None = None, lo: int = 0, hi: int = 2**62
) -> int:
    value = data.get(name, default)
    if value is None and default is None and name not in data:
        raise BadRequest(f"{name} is required")
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise BadRequest(f"{name} must be an integer between {lo} and {hi}")
    return value
