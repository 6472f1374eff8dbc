"""Messages: seq allocation in the storing transaction, history and unread queries."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, exists, func, select, text, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.base import utcnow
from app.db.models import Group, GroupMember, Message, ReadMark

# Postgres stores a message in ONE autocommitted statement: take the group's next seq (the
# row lock serialises concurrent senders: no gap, no duplicate), insert the message and, when
# the outbox is on, its bus event with the seq and timestamp filled in. One round trip.
STORE_PG = text(
    """
WITH next AS (
    UPDATE groups SET last_seq = last_seq + 1
    WHERE id = :group_id
      AND EXISTS (SELECT 1 FROM group_members WHERE group_id = :group_id AND user_id = :sender_id)
    RETURNING last_seq, clock_timestamp() AS created_at
), stored AS (
    INSERT INTO messages (id, group_id, seq, sender_id, sender_name, msg_type, content,
                          image_url, client_msg_id, created_at)
    SELECT :id, :group_id, last_seq, :sender_id, :sender_name, :msg_type, :content,
           :image_url, :client_msg_id, created_at FROM next
    RETURNING seq, created_at
), event AS (
    INSERT INTO outbox (stream, payload, created_at)
    SELECT CAST(:stream AS varchar),
           convert_to(jsonb_set(jsonb_set(CAST(:event AS jsonb), '{d,seq}', to_jsonb(seq)),
               '{d,created_at}', to_jsonb(floor(extract(epoch FROM created_at) * 1000)::bigint)
           )::text, 'UTF8'),
           created_at
    FROM stored WHERE CAST(:stream AS varchar) IS NOT NULL
    RETURNING id
)
SELECT stored.seq, stored.created_at, (SELECT id FROM event) AS outbox_id FROM stored
"""
)


@dataclass(frozen=True, slots=True)
class Stored:
    message: Message
    outbox_id: int | None


class MessageRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def store(
        self,
        *,
        group_id: str,
        sender_id: str,
        sender_name: str,
        msg_type: int,
        content: str,
        image_url: str,
        client_msg_id: str | None,
        outbox_stream: str | None = None,
        outbox_event: Callable[[Message], bytes] | None = None,
    ) -> Stored | None:
        """Store a message with the group's next seq; None when the sender is not a member.

        On Postgres, with `outbox_stream` set, the message's outbox entry is written by the
        same statement: `outbox_event` encodes it, and the database fills in seq and
        created_at. (On SQLite the caller stages it in the session's transaction.)

        Raises IntegrityError when (group, sender, client_msg_id) exists already.
        """
        message = Message(
            id=str(uuid.uuid4()),
            group_id=group_id,
            seq=0,  # taken below, in the storing statement or transaction
            sender_id=sender_id,
            sender_name=sender_name,
            msg_type=msg_type,
            content=content,
            image_url=image_url,
            client_msg_id=client_msg_id,
            created_at=utcnow(),
        )
        if self.session.get_bind().dialect.name == "postgresql":
            template = b"{}"
            if outbox_stream is not None and outbox_event is not None:
                template = outbox_event(message)
            conn = await self.session.connection(
                execution_options={"isolation_level": "AUTOCOMMIT"}
            )
            row = (
                await conn.execute(
                    STORE_PG,
                    {
                        "id": message.id,
                        "group_id": group_id,
                        "sender_id": sender_id,
                        "sender_name": sender_name,
                        "msg_type": msg_type,
                        "content": content,
                        "image_url": image_url,
                        "client_msg_id": client_msg_id,
                        "stream": outbox_stream,
                        "event": template.decode(),
                    },
                )
            ).first()
            if row is None:
                return None
            message.seq, message.created_at = row.seq, row.created_at
            return Stored(message, row.outbox_id)
        seq = await self.next_seq(group_id=group_id, sender_id=sender_id)
        if seq is None:
            return None
        message.seq = seq
        self.session.add(message)
        await self.session.flush()
        return Stored(message, None)

    async def next_seq(self, *, group_id: str, sender_id: str) -> int | None:
        """Take the group's next seq, or None when the sender is not a member.

        The row lock taken by this UPDATE serialises concurrent senders of one group until
        the transaction ends, so seqs are consecutive: no gap, no duplicate.
        """
        is_member = exists().where(
            GroupMember.group_id == group_id, GroupMember.user_id == sender_id
        )
        return await self.session.scalar(
            update(Group)
            .where(Group.id == group_id, is_member)
            .values(last_seq=Group.last_seq + 1)
            .returning(Group.last_seq)
        )

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
