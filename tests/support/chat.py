"""Service-level helpers shared by the storage tests (Postgres and embedded SQLite)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import select

from app.bus.base import BusEvent
from app.db.models import Message, Notification, OutboxEntry
from app.db.repositories.messages import MessageRepository
from app.db.repositories.read_marks import ReadMarkRepository
from app.errors import NotMember
from app.schemas import events
from app.services import chat, groups, notifications
from app.services.chat import Sender, SendResult
from app.services.context import ServiceContext
from app.services.outbox import OutboxRelay, decode_entry

MEMBERS = ["alice", "bob", "carol", "dave", "erin"]


async def new_group(ctx: ServiceContext, members: list[str] = MEMBERS) -> str:
    """A group owned by the first of `members`, all of them in it."""
    group = await groups.create_group(ctx, owner_id=members[0], name="load", member_ids=members)
    return str(group["group_id"])


async def stored(ctx: ServiceContext, group_id: str) -> list[Message]:
    """The group's stored messages in seq order."""
    async with ctx.session() as session:
        rows = await session.scalars(
            select(Message).where(Message.group_id == group_id).order_by(Message.seq)
        )
        return list(rows)


async def send(
    ctx: ServiceContext, group_id: str, user: str, text: str, client_id: str | None = None
) -> SendResult:
    return await chat.send_message(
        ctx,
        sender=Sender(user, user.title()),
        group_id=group_id,
        msg_type=1,
        content=text,
        client_msg_id=client_id,
    )


async def take(events: AsyncIterator[BusEvent], count: int, field: str) -> list[Any]:
    """`field` of the data of the next `count` events of a bus subscription (10 s at most)."""
    found: list[Any] = []
    async with asyncio.timeout(10):
        async for event in events:
            found.append(event.data[field])
            if len(found) == count:
                break
    return found


async def sent_and_read_back(ctx: ServiceContext) -> tuple[str, list[dict[str, Any]]]:
    """Six sends (client ids, non-ASCII text) into a new group; checks that what the ORM (REST
    history) reads back is what each send answered, to the millisecond. (group, acks)."""
    group_id = await new_group(ctx)
    acks = [
        (await send(ctx, group_id, MEMBERS[n % 5], f"m{n} ünïcode", client_id=f"c{n}")).message
        for n in range(6)
    ]
    assert [m["seq"] for m in acks] == list(range(1, 7))
    async with ctx.session() as session:
        rows = await MessageRepository(session).after_seq(group_id=group_id, after_seq=0, limit=10)
    assert [events.message_data(m) for m in rows] == acks
    return group_id, acks


async def read_marks_clamp_never_go_back_and_announce_only_moves(ctx: ServiceContext) -> None:
    """What every storage path must do with read marks (SPEC §11), on a new group."""
    group_id = await new_group(ctx)
    updates = ctx.bus.subscribe(ctx.settings.STREAM_EVENTS)
    for n in range(3):
        await send(ctx, group_id, "alice", f"m{n}")
    assert await chat.mark_read(ctx, user_id="bob", group_id=group_id, seq=2) == 2
    assert await chat.mark_read(ctx, user_id="bob", group_id=group_id, seq=1) == 2  # not back
    assert await chat.mark_read(ctx, user_id="bob", group_id=group_id, seq=99) == 3  # clamped
    assert await chat.mark_read(ctx, user_id="bob", group_id=group_id, seq=3) == 3
    # Past a BIGINT (REST's body has no upper bound): clamped like any seq past the last.
    assert await chat.mark_read(ctx, user_id="carol", group_id=group_id, seq=2**70) == 3
    assert await chat.mark_read(ctx, user_id="dave", group_id=group_id, seq=0) == 0
    with pytest.raises(NotMember):
        await chat.mark_read(ctx, user_id="mallory", group_id=group_id, seq=1)
    with pytest.raises(NotMember):
        await chat.mark_read(ctx, user_id="bob", group_id="no-such-group", seq=1)
    async with ctx.session() as session:
        marks = ReadMarkRepository(session)
        assert await marks.get(user_id="bob", group_id=group_id) == 3
        assert await marks.get(user_id="carol", group_id=group_id) == 3
        assert await marks.get(user_id="mallory", group_id=group_id) == 0
    # One update per move, none for the calls that moved nothing.
    assert await take(updates, 3, "last_read_seq") == [2, 3, 3]


async def read_updates_in_the_outbox(ctx: ServiceContext) -> None:
    """With the outbox on (its relay not running, so entries stay to be read): a mark that
    moves stores its read update, last_read_seq filled in and origin kept; one that does not
    stores none."""
    ctx.outbox = OutboxRelay(ctx.sessions, ctx.bus)
    group_id = await new_group(ctx)
    for n in range(4):
        await send(ctx, group_id, "alice", f"m{n}")
    await chat.mark_read(ctx, user_id="bob", group_id=group_id, seq=2, origin="conn-1")
    await chat.mark_read(ctx, user_id="bob", group_id=group_id, seq=1, origin="conn-2")
    await chat.mark_read(ctx, user_id="bob", group_id=group_id, seq=2, origin="conn-3")
    await chat.mark_read(ctx, user_id="bob", group_id=group_id, seq=9, origin="conn-4")
    with pytest.raises(NotMember):
        await chat.mark_read(ctx, user_id="mallory", group_id=group_id, seq=1, origin="conn-5")
    async with ctx.session() as session:
        entries = list(
            await session.scalars(
                select(OutboxEntry)
                .where(OutboxEntry.stream == ctx.settings.STREAM_EVENTS)
                .order_by(OutboxEntry.id)
            )
        )
    reads = [e for e in map(decode_entry, (e.payload for e in entries)) if e.kind == events.READ]
    assert [(r.kind, r.data) for r in reads] == [
        (
            events.READ,
            events.read_event(user_id="bob", group_id=group_id, last_read_seq=seq, origin=origin),
        )
        for seq, origin in ((2, "conn-1"), (4, "conn-4"))
    ]


async def notifications_pushed_with_their_outbox_entries(ctx: ServiceContext) -> None:
    """A push to 300 users (one named twice) stores one row per user and, with the outbox on
    (its relay not running), one entry for the whole push, published as one event whose
    pairs are the stored rows; that entry is what the relay is told was published."""
    relay = ctx.outbox = OutboxRelay(ctx.sessions, ctx.bus)
    stream = ctx.settings.STREAM_NOTIFICATIONS
    users = [f"{uuid.uuid4().hex[:8]}-{i}" for i in range(300)]
    published = ctx.bus.subscribe(stream)
    created = await notifications.push(
        ctx, user_ids=[*users, users[7]], type="t", title="T", content="c"
    )
    assert [c["user_id"] for c in created] == users
    async with ctx.session() as session:
        rows = await session.scalars(select(Notification).where(Notification.user_id.in_(users)))
        stored = {n.id: n for n in rows}
        entries = {
            e.id: decode_entry(e.payload)
            for e in await session.scalars(select(OutboxEntry).where(OutboxEntry.stream == stream))
        }
    assert len(stored) == 300
    for data in created:
        row = stored[data["notification_id"]]
        assert row.user_id == data["user_id"] and row.read_at is None
        assert events.notification_data(row) == {k: v for k, v in data.items() if k != "user_id"}
    pairs = [[c["user_id"], c["notification_id"]] for c in created]
    ours = [i for i, e in entries.items() if e.data.get("users") == pairs]
    assert len(ours) == 1 and relay._published == ours
    shared = {k: created[0][k] for k in ("type", "title", "content", "created_at")}
    assert entries[ours[0]].data == {"users": pairs, **shared}
    async with asyncio.timeout(10):
        event = await anext(aiter(published))
    assert (event.kind, event.data) == (events.NOTIFICATION, {"users": pairs, **shared})
