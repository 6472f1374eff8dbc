"""System notifications: store, then push to every connection of each target user."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from app.bus.base import BusEvent
from app.db.base import NewNotifications, to_ms
from app.db.models import Notification
from app.db.repositories.cursor import decode_cursor, encode_cursor
from app.db.repositories.notifications import NotificationRepository
from app.errors import NotFound
from app.schemas import events
from app.services.context import ServiceContext
from app.services.outbox import Staged


def notification_public(row: Notification) -> dict[str, Any]:
    return {
        **events.notification_data(row),
        "read_at": to_ms(row.read_at) if row.read_at else None,
    }


async def push(
    ctx: ServiceContext, *, user_ids: Sequence[str], type: str, title: str, content: str
) -> list[dict[str, Any]]:
    """Store one notification per distinct user and publish the push after the commit; returns
    their `notification` event data (each with its user_id).

    The push is one bus event (`users`: [user_id, notification_id] pairs, and the fields they
    share), not one per user: one outbox entry, one stream entry, one read by each instance.
    """
    new = NewNotifications.push(user_ids, type=type, title=title, content=content)
    if not new.ids:
        return []
    shared = new.shared()
    pairs = [[user_id, n_id] for user_id, n_id in zip(new.user_ids, new.ids, strict=True)]
    event = BusEvent(events.NOTIFICATION, {"users": pairs, **shared})
    stream = ctx.settings.STREAM_NOTIFICATIONS
    if ctx.hot is not None:
        outbox_id = await ctx.hot.store_notifications(new, **ctx.for_outbox(stream, event))
        staged = Staged(stream, event, outbox_id=outbox_id)
    else:
        async with ctx.session() as session:
            await NotificationRepository(session).add_many(new)
            staged = ctx.stage(session, stream, event)
            await session.commit()
    await ctx.dispatch(staged)
    return [{"user_id": user_id, "notification_id": n_id, **shared} for user_id, n_id in pairs]


async def page(
    ctx: ServiceContext, *, user_id: str, unread_only: bool, limit: int, cursor: str | None
) -> tuple[list[dict[str, Any]], str | None]:
    before = decode_cursor(cursor) if cursor else None
    async with ctx.session() as session:
        rows = await NotificationRepository(session).page(
            user_id=user_id, unread_only=unread_only, limit=limit + 1, before=before
        )
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = encode_cursor(rows[-1].created_at, rows[-1].id) if more else None
    return [notification_public(r) for r in rows], next_cursor


async def mark_read(ctx: ServiceContext, *, user_id: str, notification_id: str) -> dict[str, Any]:
    async with ctx.session() as session:
        row = await NotificationRepository(session).mark_read(
            user_id=user_id, notification_id=notification_id
        )
        if row is None:
            raise NotFound("notification not found")
        await session.commit()
        return notification_public(row)


async def mark_all_read(ctx: ServiceContext, *, user_id: str) -> int:
    async with ctx.session() as session:
        count = await NotificationRepository(session).mark_all_read(user_id=user_id)
        await session.commit()
        return count
