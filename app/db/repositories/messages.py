"""Messages: seq allocation in the storing transaction, history and unread queries."""

from __future__ import annotations

from datetime import datetime
from typing import cast

from sqlalchemy import Table, and_, exists, func, insert, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.base import NewMessage, utcnow
from app.db.models import Group, GroupMember, Message, ReadMark

MESSAGES = cast(Table, Message.__table__)
GROUPS = cast(Table, Group.__table__)


class MessageRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def store(self, new: NewMessage) -> Message | None:
        """Store a message with the group's next seq in the session's transaction; None when
        the sender is not a member. (On Postgres the service stores messages through
        app.db.hotpath instead: one statement, no transaction.)

        Raises IntegrityError when (group, sender, client_msg_id) exists already.
        """
        seq = await self.next_seq(group_id=new.group_id, sender_id=new.sender_id)
        if seq is None:
            return None
        values = {
            "id": new.id,
            "group_id": new.group_id,
            "seq": seq,
            "sender_id": new.sender_id,
            "sender_name": new.sender_name,
            "msg_type": new.msg_type,
            "content": new.content,
            "image_url": new.image_url,
            "client_msg_id": new.client_msg_id,
            "created_at": utcnow(),
        }
        # A Core insert: the ORM's unit of work (flush, identity map) costs more than the
        # statement on SQLite, and nothing reads the row back through this session.
        await self.session.execute(insert(MESSAGES).values(**values))
        return Message(**values)

    async def next_seq(self, *, group_id: str, sender_id: str) -> int | None:
        """Take the group's next seq, or None when the sender is not a member.

        The row lock taken by this UPDATE serialises concurrent senders of one group until
        the transaction ends, so seqs are consecutive: no gap, no duplicate.
        """
        is_member = exists().where(
            GroupMember.group_id == group_id, GroupMember.user_id == sender_id
        )
        # A Core UPDATE: no ORM bulk-update machinery, no synchronisation of loaded Group
        # objects (the session holds none that are read afterwards).
        seq: int | None = await self.session.scalar(
            update(GROUPS)
            .where(GROUPS.c.id == group_id, is_member)
            .values(last_seq=GROUPS.c.last_seq + 1)
            .returning(GROUPS.c.last_seq)
        )
        return seq

    async def by_client_id(
        self, *, group_id: str, sender_id: str, client_msg_id: str
    ) -> Message | None:
        return await self.session.scalar(
            select(Message).where(
                Message.group_id == group_id,
                Message.sender_id == sender_id,
                Message.client_msg_id == client_msg_id,
            )
        )

    async def after_seq(self, *, group_id: str, after_seq: int, limit: int) -> list[Message]:
        rows = await self.session.scalars(
            select(Message)
            .where(Message.group_id == group_id, Message.seq > after_seq)
            .order_by(Message.seq)
            .limit(limit)
        )
        return list(rows)

    async def before_seq(
        self, *, group_id: str, before_seq: int | None, limit: int
    ) -> list[Message]:
        """The `limit` messages just before `before_seq` (or the latest), ascending."""
        query = select(Message).where(Message.group_id == group_id)
        if before_seq is not None:
            query = query.where(Message.seq < before_seq)
        rows = await self.session.scalars(query.order_by(Message.seq.desc()).limit(limit))
        return list(reversed(list(rows)))

    async def unread_for(
        self, *, user_id: str, limit: int, after: tuple[datetime, str] | None
    ) -> list[Message]:
        """Messages of the user's groups past its read mark, sent by others, oldest first."""
        mark = func.coalesce(ReadMark.last_read_seq, 0)
        query = (
            select(Message)
            .join(
                GroupMember,
                and_(GroupMember.group_id == Message.group_id, GroupMember.user_id == user_id),
            )
            .outerjoin(
                ReadMark,
                and_(ReadMark.group_id == Message.group_id, ReadMark.user_id == user_id),
            )
            .where(Message.seq > mark, Message.sender_id != user_id)
            .order_by(Message.created_at, Message.id)
            .limit(limit)
        )
        if after is not None:
            query = query.where(tuple_(Message.created_at, Message.id) > tuple_(*after))
        rows = await self.session.scalars(query)
        return list(rows)
