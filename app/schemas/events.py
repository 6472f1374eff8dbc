"""Bus payloads and the pushed-frame data built from stored rows (JSON round-trip safe)."""

from __future__ import annotations

from typing import Any

from app.db.base import to_ms
from app.db.models import Message, Notification

MESSAGE = "message"
NOTIFICATION = "notification"
MEMBERSHIP = "membership"
READ = "read"


def message_data(message: Message) -> dict[str, Any]:
    """The `new_message` data of SPEC §3.3 (also the REST message shape)."""
    return {
        "message_id": message.id,
        "group_id": message.group_id,
        "seq": message.seq,
        "sender_id": message.sender_id,
        "sender_name": message.sender_name,
        "msg_type": message.msg_type,
        "content": message.content,
        "image_url": message.image_url,
        "created_at": to_ms(message.created_at),
    }


def notification_data(row: Notification) -> dict[str, Any]:
    """The `notification` data of SPEC §3.3."""
    return {
        "notification_id": row.id,
        "type": row.type,
        "title": row.title,
        "content": row.content,
        "created_at": to_ms(row.created_at),
    }


def notification_event(row: Notification) -> dict[str, Any]:
    return {"user_id": row.user_id, **notification_data(row)}


def membership_event(*, group_id: str, user_id: str, added: bool, last_seq: int) -> dict[str, Any]:
    return {"group_id": group_id, "user_id": user_id, "added": added, "last_seq": last_seq}


def read_event(
    *, user_id: str, group_id: str, last_read_seq: int, origin: str | None
) -> dict[str, Any]:
    return {
        "user_id": user_id,
        "group_id": group_id,
        "last_read_seq": last_read_seq,
        "origin": origin,
    }
