"""The send pipeline (validate → store → publish), history, sync, unread and read marks."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy.exc import IntegrityError

from app.bus.base import BusEvent
from app.db.base import NewMessage
from app.db.hotpath import DuplicateMessage
from app.db.repositories.cursor import decode_cursor, encode_cursor
from app.db.repositories.groups import GroupRepository
from app.db.repositories.messages import MessageRepository
from app.db.repositories.read_marks import ReadMarkRepository
from app.errors import BadRequest, NotMember, TooLarge
from app.schemas import events
from app.services.context import ServiceContext
from app.services.outbox import Staged

log = logging.getLogger("app.services.chat")


MAX_ID_CHARS = 64
MAX_IMAGE_URL_CHARS = 2048
# Past any group's last seq: a read mark asked beyond it clamps to the group's last seq like
# any such value (and stays inside a BIGINT on its way to the database).
MAX_MARK_SEQ = 2**62


@dataclass(frozen=True, slots=True)
class Sender:
    user_id: str
    name: str


@dataclass(frozen=True, slots=True)
class SendResult:
    message: dict[str, Any]
    created: bool

    @property
    def ack(self) -> dict[str, Any]:
        m = self.message
        return {
            "message_id": m["message_id"],
            "group_id": m["group_id"],
            "seq": m["seq"],
            "created_at": m["created_at"],
            "success": True,
        }


def validate_content(
    *, msg_type: object, content: object, image_url: object, max_chars: int
) -> tuple[int, str, str]:
    """Check a message body against SPEC §11; return (msg_type, content, image_url)."""
    if isinstance(msg_type, bool) or msg_type not in (1, 2):
        raise BadRequest("msg_type must be 1 (text) or 2 (image)")
    content = "" if content is None else content
    image_url = "" if image_url is None else image_url
    if not isinstance(content, str):
        raise BadRequest("content must be a string")
    if not isinstance(image_url, str):
        raise BadRequest("image_url must be a string")
    if "\x00" in content or "\x00" in image_url:
        raise BadRequest("content and image_url must not contain NUL characters")
    if len(content) > max_chars:
        raise TooLarge(f"content is over {max_chars} characters")
    if len(image_url) > MAX_IMAGE_URL_CHARS:
        raise TooLarge(f"image_url is over {MAX_IMAGE_URL_CHARS} characters")
    if msg_type == 1 and not content.strip():
        raise BadRequest("a text message (msg_type 1) needs non-empty content")
    if msg_type == 2:
        parts = urlsplit(image_url) if image_url else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
            raise BadRequest("an image message (msg_type 2) needs an http(s) image_url")
    assert isinstance(msg_type, int)
    return msg_type, content, image_url


def check_id(value: object, field: str) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_ID_CHARS or "\x00" in value:
        raise BadRequest(f"{field} must be a non-empty string of at most {MAX_ID_CHARS} characters")
    return value


async def send_message(
    ctx: ServiceContext,
    *,
    sender: Sender,
    group_id: object,
    msg_type: object,
    content: object,
    image_url: object = "",
    client_msg_id: str | None = None,
) -> SendResult:
    """Store a message with the group's next seq and publish it; idempotent per client id.

    Raises:
        BadRequest, TooLarge: invalid body. NotMember: the sender may not post here (the same
        answer whether or not the group exists). Unavailable: storage is down.
    """
    group_id = check_id(group_id, "group_id")
    kind, text, url = validate_content(
        msg_type=msg_type,
        content=content,
        image_url=image_url,
        max_chars=ctx.settings.MAX_CONTENT_CHARS,
    )
    new = NewMessage(
        id=str(uuid.uuid4()),
        group_id=group_id,
        sender_id=sender.user_id,
        sender_name=sender.name[:100],
        msg_type=kind,
        content=text,
        image_url=url,
        client_msg_id=client_msg_id,
    )
    stream = ctx.settings.STREAM_MESSAGES
    if ctx.hot is not None:
        # seq and created_at (0 here) are filled in by the storing statement.
        data = events.message_fields(
            new.id, group_id, 0, new.sender_id, new.sender_name, kind, text, url, 0
        )
        try:
            row = await ctx.hot.store_message(
                new, **ctx.for_outbox(stream, BusEvent(events.MESSAGE, data))
            )
        except DuplicateMessage:
            assert client_msg_id is not None  # only a client id can repeat
            return await _original(ctx, new)
        if row is None:
            raise NotMember()
        data["seq"], data["created_at"] = row.seq, row.created_ms
        staged = Staged(stream, BusEvent(events.MESSAGE, data), outbox_id=row.outbox_id)
    else:
        async with ctx.session() as session:
            try:
                stored = await MessageRepository(session).store(new)
                if stored is None:
                    raise NotMember()
                data = events.message_data(stored)
                staged = ctx.stage(session, stream, BusEvent(events.MESSAGE, data))
                await session.commit()
            except IntegrityError:
                await session.rollback()
                if client_msg_id is None:
                    raise
                return await _original(ctx, new)
    if ctx.deliver_local is not None:
        try:
            ctx.deliver_local(staged.event)
        except Exception:  # the bus's copy still comes: it delivers what this did not
            log.exception("[WS] local delivery of a message failed")
    await ctx.dispatch(staged)
    log.debug("[WS] User %s sent message to group %s", sender.user_id, group_id)
    return SendResult(message=data, created=True)


async def _original(ctx: ServiceContext, new: NewMessage) -> SendResult:
    """The message a retry with the same client id stored first."""
    assert new.client_msg_id is not None
    async with ctx.session() as session:
        original = await MessageRepository(session).by_client_id(
            group_id=new.group_id, sender_id=new.sender_id, client_msg_id=new.client_msg_id
        )
    if original is None:  # a unique violation without a row: cannot happen
        raise RuntimeError("duplicate client_msg_id without a stored message")
    return SendResult(message=events.message_data(original), created=False)


async def messages_after(
    ctx: ServiceContext, *, user_id: str, group_id: str, after_seq: int, limit: int
) -> tuple[list[dict[str, Any]], int]:
    """Messages after `after_seq` for a member, and the group's last seq."""
    async with ctx.session() as session:
        found = await GroupRepository(session).membership(group_id=group_id, user_id=user_id)
        if found is None:
            raise NotMember()
        group, _ = found
        rows = await MessageRepository(session).after_seq(
            group_id=group_id, after_seq=after_seq, limit=limit
        )
        return [events.message_data(m) for m in rows], group.last_seq


async def messages_before(
    ctx: ServiceContext, *, user_id: str, group_id: str, before_seq: int | None, limit: int
) -> list[dict[str, Any]]:
    async with ctx.session() as session:
        if not await GroupRepository(session).is_member(group_id=group_id, user_id=user_id):
            raise NotMember()
        rows = await MessageRepository(session).before_seq(
            group_id=group_id, before_seq=before_seq, limit=limit
        )
        return [events.message_data(m) for m in rows]


async def mark_read(
    ctx: ServiceContext, *, user_id: str, group_id: str, seq: int, origin: str | None = None
) -> int:
    """Advance the user's read mark (clamped to the group's last seq, never backwards).

    Publishes a read update for the user's other connections when the mark moved.
    """
    seq = min(seq, MAX_MARK_SEQ)
    stream = ctx.settings.STREAM_EVENTS
    if ctx.hot is not None:
        # One statement (Postgres) or a savepoint in the next write transaction (SQLite);
        # last_read_seq (0 here) is filled in with the mark stored.
        data = events.read_event(user_id=user_id, group_id=group_id, last_read_seq=0, origin=origin)
        row = await ctx.hot.advance_read_mark(
            user_id, group_id, seq, **ctx.for_outbox(stream, BusEvent(events.READ, data))
        )
        if row is None:
            raise NotMember()
        if row.moved:
            data["last_read_seq"] = row.now
            await ctx.dispatch(Staged(stream, BusEvent(events.READ, data), outbox_id=row.outbox_id))
        return row.now
    async with ctx.session() as session:
        found = await GroupRepository(session).membership(group_id=group_id, user_id=user_id)
        if found is None:
            raise NotMember()
        group, _ = found
        marks = ReadMarkRepository(session)
        before = await marks.get(user_id=user_id, group_id=group_id)
        target = max(0, min(seq, group.last_seq))
        now = await marks.advance(user_id=user_id, group_id=group_id, seq=target)
        staged = []
        if now != before:
            data = events.read_event(
                user_id=user_id, group_id=group_id, last_read_seq=now, origin=origin
            )
            staged.append(ctx.stage(session, stream, BusEvent(events.READ, data)))
        await session.commit()
    await ctx.dispatch(*staged)
    return now


async def message_by_id(ctx: ServiceContext, *, user_id: str, message_id: str) -> tuple[str, int]:
    """(group_id, seq) of a message the user may see, for `mark_read` by message id."""
    from app.db.models import Message

    async with ctx.session() as session:
        row = await session.get(Message, message_id)
        if row is None or not await GroupRepository(session).is_member(
            group_id=row.group_id, user_id=user_id
        ):
            raise NotMember("message not found in any of your groups")
        return row.group_id, row.seq


async def unread(
    ctx: ServiceContext, *, user_id: str, limit: int, cursor: str | None
) -> tuple[list[dict[str, Any]], str | None]:
    """Unread messages across the user's groups, oldest first, and the next page's cursor."""
    after = decode_cursor(cursor) if cursor else None
    if ctx.hot is not None:
        found = await ctx.hot.unread_for(user_id, limit + 1, after)
        page = found[:limit]
        cursor_out = None
        if len(found) > limit:
            last, created_at = page[-1]
            cursor_out = encode_cursor(created_at, last["message_id"])
        return [data for data, _ in page], cursor_out
    async with ctx.session() as session:
        rows = await MessageRepository(session).unread_for(
            user_id=user_id, limit=limit + 1, after=after
        )
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = encode_cursor(rows[-1].created_at, rows[-1].id) if more else None
    return [events.message_data(m) for m in rows], next_cursor
