"""Service-level helpers shared by the storage tests (Postgres and embedded SQLite)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy import select

from app.bus.base import BusEvent
from app.db.models import Message
from app.db.repositories.messages import MessageRepository
from app.schemas import events
from app.services import chat, groups
from app.services.chat import Sender, SendResult
from app.services.context import ServiceContext

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
