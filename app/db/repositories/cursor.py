"""Opaque keyset cursors: (timestamp, id) pairs encoded as URL-safe base64."""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime

from app.errors import AppError


class InvalidCursor(AppError):
    code = 422
    default_message = "malformed cursor"


def encode_cursor(at: datetime, row_id: str) -> str:
    raw = f"{at.timestamp():.6f}|{row_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        raw = base64.urlsafe_b64decode(padded.encode("ascii")).decode()
        stamp, row_id = raw.split("|", 1)
        at = datetime.fromtimestamp(float(stamp), UTC)
    except (ValueError, UnicodeError, binascii.Error, OverflowError, OSError) as exc:
        raise InvalidCursor() from exc
    if not row_id or len(row_id) > 64 or "\x00" in row_id:
        raise InvalidCursor()
    return at, row_id
