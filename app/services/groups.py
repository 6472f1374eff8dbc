"""Groups and membership; membership changes are published so every hub updates at once."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.bus.base import BusEvent
from app.db.base import to_ms
from app.db.models import Group
from app.db.repositories.groups import GroupRepository, GroupView
from app.errors import Conflict, Forbidden, NotFound, NotMember
from app.schemas import events
from app.services.context import ServiceContext
from app.services.outbox import Staged


def group_public(group: Group, *, last_read_seq: int, unread_count: int) -> dict[str, Any]:
    return {
        "group_id": group.id,
        "name": group.name,
        "owner_id": group.owner_id,
        "last_seq": group.last_seq,
        "last_read_seq": last_read_seq,
        "unread_count": unread_count,
        "created_at": to_ms(group.created_at),
    }


def view_public(view: GroupView) -> dict[str, Any]:
    return group_public(
        view.group, last_read_seq=view.last_read_seq, unread_count=view.unread_count
    )


def _announce(
    ctx: ServiceContext,
    session: AsyncSession,
    *,
    group_id: str,
    user_id: str,
    added: bool,
    last_seq: int,
) -> Staged:
    data = events.membership_event(
        group_id=group_id, user_id=user_id, added=added, last_seq=last_seq
    )
    return ctx.stage(session, ctx.settings.STREAM_EVENTS, BusEvent(events.MEMBERSHIP, data))


async def create_group(
    ctx: ServiceContext, *, owner_id: str, name: str, member_ids: Sequence[str]
) -> dict[str, Any]:
    async with ctx.session() as session:
        group = await GroupRepository(session).create(
            name=name, owner_id=owner_id, member_ids=member_ids
        )
        staged = [
            _announce(ctx, session, group_id=group.id, user_id=user_id, added=True, last_seq=0)
            for user_id in dict.fromkeys([owner_id, *member_ids])
        ]
        await session.commit()
    await ctx.dispatch(*staged)
    return group_public(group, last_read_seq=0, unread_count=0)


async def list_groups(
    ctx: ServiceContext, *, user_id: str, limit: int, after_id: str | None
) -> tuple[list[dict[str, Any]], str | None]:
    async with ctx.session() as session:
        views = await GroupRepository(session).views_for_user(
            user_id, limit=limit + 1, after_id=after_id
        )
    more = len(views) > limit
    views = views[:limit]
    return [view_public(v) for v in views], (views[-1].group.id if more else None)


async def add_member(
    ctx: ServiceContext, *, caller_id: str, group_id: str, user_id: str
) -> dict[str, Any]:
    """Owner adds a member. Raises NotMember (caller not in group), Forbidden, Conflict."""
    async with ctx.session() as session:
        repo = GroupRepository(session)
        found = await repo.membership(group_id=group_id, user_id=caller_id)
        if found is None:
            raise NotMember()
        group, me = found
        if me.role != "owner":
            raise Forbidden("only the group owner can add members")
        if await repo.is_member(group_id=group_id, user_id=user_id):
            raise Conflict("already a member")
        try:
            member = await repo.add_member(group_id=group_id, user_id=user_id)
            staged = _announce(
                ctx,
                session,
                group_id=group_id,
                user_id=user_id,
                added=True,
                last_seq=group.last_seq,
            )
            await session.commit()
        except IntegrityError as exc:
            raise Conflict("already a member") from exc
    await ctx.dispatch(staged)
    return {
        "group_id": group_id,
        "user_id": user_id,
        "role": member.role,
        "joined_at": to_ms(member.joined_at),
    }


async def remove_member(
    ctx: ServiceContext, *, caller_id: str, group_id: str, user_id: str
) -> None:
    """Owner removes a member, or a member leaves. The owner cannot leave its own group."""
    async with ctx.session() as session:
        repo = GroupRepository(session)
        found = await repo.membership(group_id=group_id, user_id=caller_id)
        if found is None:
            raise NotMember()
        group, me = found
        if user_id != caller_id and me.role != "owner":
            raise Forbidden("only the group owner can remove other members")
        if user_id == group.owner_id:
            raise Conflict("the owner cannot leave or be removed from the group")
        if not await repo.remove_member(group_id=group_id, user_id=user_id):
            # The caller is a member, so it may learn that the target user is not.
            raise NotFound("that user is not a member of this group")
        staged = _announce(
            ctx, session, group_id=group_id, user_id=user_id, added=False, last_seq=group.last_seq
        )
        await session.commit()
    await ctx.dispatch(staged)


async def group_seqs(ctx: ServiceContext, *, user_id: str) -> dict[str, int]:
    """{group_id: last_seq} of the user's groups (every WebSocket auth reads this)."""
    if ctx.hot is not None:
        return await ctx.hot.seqs_for_user(user_id)
    async with ctx.session() as session:
        return await GroupRepository(session).seqs_for_user(user_id)


async def is_member(ctx: ServiceContext, *, user_id: str, group_id: str) -> int | None:
    """The group's last seq when the user is a member, else None."""
    async with ctx.session() as session:
        found = await GroupRepository(session).membership(group_id=group_id, user_id=user_id)
        return found[0].last_seq if found else None


async def member_ids(ctx: ServiceContext, *, user_id: str, group_id: str) -> list[str]:
    """Members of a group the caller belongs to (NotMember otherwise)."""
    async with ctx.session() as session:
        repo = GroupRepository(session)
        if not await repo.is_member(group_id=group_id, user_id=user_id):
            raise NotMember()
        return await repo.member_ids(group_id)
