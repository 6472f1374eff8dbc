"""REST request and response models (SPEC §4, §11)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

# Ids never hold control characters (Postgres cannot even store NUL).
ID_PATTERN = r"^[^\x00-\x1f\x7f]+$"
UserIdStr = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=64, pattern=ID_PATTERN),
]


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    @field_validator("*")
    @classmethod
    def _no_nul(cls, value: object) -> object:
        """Postgres text cannot hold NUL: refuse it here (422) on both backends, not with a 500."""
        items = value if isinstance(value, list) else [value]
        if any(isinstance(item, str) and "\x00" in item for item in items):
            raise ValueError("must not contain NUL characters")
        return value


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
    # No schema bound: content over MAX_CONTENT_CHARS gets 413 from the send pipeline,
    # however long it is (SPEC §11), not a 422 from here.
    content: str = Field("", description="at most MAX_CONTENT_CHARS code points (413 beyond)")
    image_url: str = Field("", max_length=2048)
    client_msg_id: str | None = Field(
        None, min_length=1, max_length=64, description="idempotency key chosen by the client"
    )

    @field_validator("msg_type", mode="before")
    @classmethod
    def _integer_only(cls, value: object) -> object:
        # Literal[1, 2] alone lets `true` and `1.0` through as 1, even in strict mode.
        if isinstance(value, bool | float):
            raise ValueError("msg_type must be the integer 1 or 2")
        return value


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


class ErrorOut(BaseModel):
    """Every REST error (SPEC §4)."""

    detail: str = Field(description="what went wrong, for a person to read")


class FieldError(BaseModel):
    type: str = Field(description="pydantic's error type, e.g. `missing`, `string_too_long`")
    loc: list[str | int] = Field(description="where: `body`, `query` or `path`, then the field")
    msg: str


class ValidationErrorOut(BaseModel):
    """422: the fields that failed validation, or one message (e.g. a malformed cursor)."""

    detail: list[FieldError] | str
