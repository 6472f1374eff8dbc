"""Read marks, which only ever move forwards."""

from __future__ import annotations

from sqlalchemy import func
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.base import utcnow
from app.db.models import ReadMark


class ReadMarkRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def advance(self, *, user_id: str, group_id: str, seq: int) -> int:
        """Raise the mark to `seq` unless it is already higher; return the mark now stored."""
        dialect = self.session.get_bind().dialect.name
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        higher = func.greatest if dialect == "postgresql" else func.max
        now = utcnow()
        stmt = insert(ReadMark).values(
            user_id=user_id, group_id=group_id, last_read_seq=seq, updated_at=now
        )
        upsert = stmt.on_conflict_do_update(
            index_elements=[ReadMark.user_id, ReadMark.group_id],
            set_={
                "last_read_seq": higher(ReadMark.last_read_seq, stmt.excluded.last_read_seq),
                "updated_at": now,
            },
        ).returning(ReadMark.last_read_seq)
        value = await self.session.scalar(upsert)
        return int(value or 0)

    async def get(self, *, user_id: str, group_id: str) -> int:
        mark = await self.session.get(ReadMark, (user_id, group_id))
        return mark.last_read_seq if mark else 0
