"""Per-user notifications, listed newest first with keyset cursors."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import insert, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.base import NewNotifications, utcnow
from app.db.models import Notification


class NotificationRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add_many(self, new: NewNotifications) -> None:
        """The push's notifications in one multi-row INSERT (no ORM object per row: for a push
        to 1,000 users those cost more than the database did)."""
        await self.session.execute(insert(Notification), new.rows())

    async def page(
        self,
        *,
        user_id: str,
        unread_only: bool,
        limit: int,
        before: tuple[datetime, str] | None,
    ) -> list[Notification]:
        query = select(Notification).where(Notification.user_id == user_id)
        if unread_only:
            query = query.where(Notification.read_at.is_(None))
        if before is not None:
            query = query.where(tuple_(Notification.created_at, Notification.id) < tuple_(*before))
        query = query.order_by(Notification.created_at.desc(), Notification.id.desc()).limit(limit)
        return list(await self.session.scalars(query))

    async def mark_read(self, *, user_id: str, notification_id: str) -> Notification | None:
        row = await self.session.get(Notification, notification_id)
        if row is None or row.user_id != user_id:
            return None
        if row.read_at is None:
            row.read_at = utcnow()
            await self.session.flush()
        return row

    async def mark_all_read(self, *, user_id: str) -> int:
        result = await self.session.execute(
            update(Notification)
            .where(Notification.user_id == user_id, Notification.read_at.is_(None))
            .values(read_at=utcnow())
        )
        return int(result.rowcount)  # type: ignore[attr-defined]
