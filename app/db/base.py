"""Declarative base with a naming convention (stable Alembic diffs) and a UTC timestamp type."""

from __future__ import annotations

import calendar
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime, MetaData, TypeDecorator
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite hands back naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)  # type: ignore[no-any-return]
        return value.astimezone(UTC)  # type: ignore[no-any-return]


class Base(DeclarativeBase):
    metadata = metadata


def utcnow() -> datetime:
    return datetime.now(UTC)


def to_ms(value: datetime) -> int:
    """Unix milliseconds, exactly (float timestamps can round up a whole second)."""
    return calendar.timegm(value.utctimetuple()) * 1000 + value.microsecond // 1000


@dataclass(frozen=True, slots=True)
class NewMessage:
    """A validated message to store; the database gives it its seq and its time."""

    id: str
    group_id: str
    sender_id: str
    sender_name: str
    msg_type: int
    content: str
    image_url: str
    client_msg_id: str | None

    def columns(self) -> tuple[str, str, str, str, int, str, str, str | None]:
        """id, group_id, sender_id, sender_name, msg_type, content, image_url, client_msg_id:
        the first eight parameters of both hot paths' storing statements."""
        return (
            self.id,
            self.group_id,
            self.sender_id,
            self.sender_name,
            self.msg_type,
            self.content,
            self.image_url,
            self.client_msg_id,
        )


@dataclass(frozen=True, slots=True)
class NewNotifications:
    """One push: a notification for each of `user_ids` (distinct), sharing the rest."""

    ids: list[str]
    user_ids: list[str]
    type: str
    title: str
    content: str
    created_at: datetime

    @classmethod
    def push(
        cls, user_ids: Sequence[str], *, type: str, title: str, content: str
    ) -> NewNotifications:
        users = list(dict.fromkeys(user_ids))
        ids = [str(uuid.uuid4()) for _ in users]
        return cls(ids, users, type, title, content, utcnow())

    def shared(self) -> dict[str, Any]:
        """The `notification` fields (SPEC §3.3) every one of them has."""
        return {
            "type": self.type,
            "title": self.title,
            "content": self.content,
            "created_at": to_ms(self.created_at),
        }

    def rows(self) -> list[dict[str, Any]]:
        """The rows to insert (`notifications` columns)."""
        return [
            {
                "id": notification_id,
                "user_id": user_id,
                "type": self.type,
                "title": self.title,
                "content": self.content,
                "created_at": self.created_at,
            }
            for notification_id, user_id in zip(self.ids, self.user_ids, strict=True)
        ]
