"""REST request and response models (SPEC §4, §11)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

UserIdStr = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class GroupCreate(StrictModel):
    name: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
    member_ids: list[UserIdStr] = Field(default_factory=list, max_length=1000)


class GroupPublic(BaseModel):
    group_id: str
    name: str
    owner_id: str
    last_seq: int
    last_read_seq: int = Field(description="the caller's read mark")
    unread_count: int = Field(description="messages after the read mark sent by others")
    created_at: int = Field(description="Unix milliseconds")


class GroupsPublic(BaseModel):
    items: list[GroupPublic]
    next_cursor: str | None = None


class MemberAdd(StrictModel):
    user_id: UserIdStr


class MemberPublic(BaseModel):
    group_id: str
    user_id: str
    role: Literal["owner", "member"]
    joined_at: int


class MessageCreate(StrictModel):
    msg_type: Literal[1, 2] = Field(1, description="1 text, 2 image")
    content: str = Field("", max_length=1_000_000)
    image_url: str = Field("", max_length=2048)
    client_msg_id: str | None = Field(
        None, min_length=1, max_length=64, description="idempotency key chosen by the client"
    )


class MessagePublic(BaseModel):
    message_id: str
    group_id: str
    seq: int
    sender_id: str
    sender_name: str
    msg_type: int
    content: str
    image_url: str
    created_at: int


class MessagesPublic(BaseModel):
    items: list[MessagePublic]
    next_cursor: str | None = Field(
        None, description="pass as the same query parameter to continue in the same direction"
    )


class SendAck(BaseModel):
    message_id: str
    group_id: str
    seq: int
    created_at: int
    success: bool = True


class ReadMarkIn(StrictModel):
    seq: int = Field(ge=0)


class ReadMarkPublic(BaseModel):
    group_id: str
    last_read_seq: int


class NotificationCreate(StrictModel):
    user_ids: list[UserIdStr] = Field(min_length=1, max_length=1000)
    type: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]
    title: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    content: str = Field("", max_length=4000)


class NotificationPublic(BaseModel):
    notification_id: str
    type: str
    title: str
    content: str
    created_at: int
    read_at: int | None = None


class NotificationsPublic(BaseModel):
    items: list[NotificationPublic]
    next_cursor: str | None = None


class NotificationsCreated(BaseModel):
    items: list[NotificationPublic]
    user_ids: list[str]


class Count(BaseModel):
    updated: int


class OnlinePublic(BaseModel):
    group_id: str
    user_ids: list[str]
