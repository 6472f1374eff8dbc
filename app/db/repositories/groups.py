"""Groups and their members."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import and_, bindparam, delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.base import utcnow
from app.db.models import Group, GroupMember, Message, ReadMark

SEQS_FOR_USER = (
    select(Group.id, Group.last_seq)
    .join(GroupMember, GroupMember.group_id == Group.id)
    .where(GroupMember.user_id == bindparam("user_id"))
)


@dataclass(frozen=True, slots=True)
class GroupView:
    group: Group
    last_read_seq: int
    unread_count: int


class GroupRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def create(self, *, name: str, owner_id: str, member_ids: Sequence[str]) -> Group:
        now = utcnow()
        group = Group(
            id=str(uuid.uuid4()), name=name, owner_id=owner_id, last_seq=0, created_at=now
        )
        self.session.add(group)
        await self.session.flush()
        members = {owner_id: "owner"}
        for user_id in member_ids:
            members.setdefault(user_id, "member")
        self.session.add_all(
            GroupMember(group_id=group.id, user_id=user_id, role=role, joined_at=now)
            for user_id, role in members.items()
        )
        await self.session.flush()
        return group

    async def get(self, group_id: str) -> Group | None:
        return await self.session.get(Group, group_id)

    async def membership(self, *, group_id: str, user_id: str) -> tuple[Group, GroupMember] | None:
        row = (
            await self.session.execute(
                select(Group, GroupMember)
                .join(GroupMember, GroupMember.group_id == Group.id)
                .where(Group.id == group_id, GroupMember.user_id == user_id)
            )
        ).first()
        return (row[0], row[1]) if row else None

    async def is_member(self, *, group_id: str, user_id: str) -> bool:
        found = await self.session.scalar(
            select(GroupMember.user_id).where(
                GroupMember.group_id == group_id, GroupMember.user_id == user_id
            )
        )
        return found is not None

    async def add_member(self, *, group_id: str, user_id: str) -> GroupMember:
        member = GroupMember(group_id=group_id, user_id=user_id, role="member", joined_at=utcnow())
        self.session.add(member)
        await self.session.flush()
        return member

    async def remove_member(self, *, group_id: str, user_id: str) -> bool:
        result = await self.session.execute(
            delete(GroupMember).where(
                GroupMember.group_id == group_id, GroupMember.user_id == user_id
            )
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def member_ids(self, group_id: str) -> list[str]:
        rows = await self.session.scalars(
            select(GroupMember.user_id)
            .where(GroupMember.group_id == group_id)
            .order_by(GroupMember.user_id)
        )
        return list(rows)

    async def seqs_for_user(self, user_id: str) -> dict[str, int]:
        """{group_id: last_seq} of every group the user belongs to (no cap on their number).
        (On Postgres every WebSocket auth reads this through app.db.hotpath instead.)"""
        rows = await self.session.execute(SEQS_FOR_USER, {"user_id": user_id})
        return {group_id: last_seq for group_id, last_seq in rows}

    async def views_for_user(
        self, user_id: str, *, limit: int, after_id: str | None
    ) -> list[GroupView]:
        """The user's groups ordered by id, with read mark and unread count (others' messages)."""
        mark = func.coalesce(ReadMark.last_read_seq, 0)
        unread = (
            select(func.count())
            .select_from(Message)
            .where(
                Message.group_id == Group.id,
                Message.seq > mark,
                Message.sender_id != user_id,
            )
            .correlate(Group, ReadMark)
            .scalar_subquery()
        )
        query = (
            select(Group, mark, unread)
            .join(
                GroupMember, and_(GroupMember.group_id == Group.id, GroupMember.user_id == user_id)
            )
            .outerjoin(ReadMark, and_(ReadMark.group_id == Group.id, ReadMark.user_id == user_id))
            .order_by(Group.id)
            .limit(limit)
        )
        if after_id is not None:
            query = query.where(Group.id > after_id)
        rows = await self.session.execute(query)
        return [GroupView(group=g, last_read_seq=int(m), unread_count=int(u)) for g, m, u in rows]
