"""Per-user notifications, listed newest first with keyset cursors."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.base import to_ms, utcnow
from app.db.models import Notification


class NotificationRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add_many(
        self, *, user_ids: Sequence[str], type: str, title: str, content: str
    ) -> list[dict[str, Any]]:
        """One notification per distinct user, in one multi-row INSERT (no ORM object per
        row: for a push to 1,000 users those cost more than the database did); returns each
        row's `notification` event data (SPEC §3.3, with its user_id)."""
        now = utcnow()
        rows = [
            {
                "id": str(uuid.uuid4()),
                "user_id": user_id,
                "type": type,
                "title": title,
                "content": content,
                "created_at": now,
            }
            for user_id in dict.fromkeys(user_ids)
        ]
        await self.session.execute(insert(Notification), rows)
        created_ms = to_ms(now)
        return [
            {
                "user_id": row["user_id"],
                "notification_id": row["id"],
                "type": type,
                "title": title,
                "content": content,
                "created_at": created_ms,
            }
            for row in rows
        ]

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
