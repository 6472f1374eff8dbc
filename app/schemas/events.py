"""Bus payloads and the pushed-frame data built from stored rows (JSON round-trip safe)."""

from __future__ import annotations

from typing import Any

from app.db.base import to_ms
from app.db.models import Message, Notification

MESSAGE = "message"
NOTIFICATION = "notification"
MEMBERSHIP = "membership"
READ = "read"


def message_fields(
    message_id: str,
    group_id: str,
    seq: int,
    sender_id: str,
    sender_name: str,
    msg_type: int,
    content: str,
    image_url: str,
    created_at: int,
) -> dict[str, Any]:
    """The `new_message` data of SPEC §3.3 (also the REST message shape); `created_at` in
    Unix milliseconds. The arguments are in the order of the hot path's columns."""
    return {
        "message_id": message_id,
        "group_id": group_id,
        "seq": seq,
        "sender_id": sender_id,
        "sender_name": sender_name,
        "msg_type": msg_type,
        "content": content,
        "image_url": image_url,
        "created_at": created_at,
    }


def message_data(message: Message) -> dict[str, Any]:
    """`message_fields` of a stored ORM row."""
    return message_fields(
        message.id,
        message.group_id,
        message.seq,
        message.sender_id,
        message.sender_name,
        message.msg_type,
        message.content,
        message.image_url,
        to_ms(message.created_at),
    )


def notification_data(row: Notification) -> dict[str, Any]:
    """The `notification` data of SPEC §3.3."""
    return {
        "notification_id": row.id,
        "type": row.type,
        "title": row.title,
        "content": row.content,
        "created_at": to_ms(row.created_at),
    }


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
