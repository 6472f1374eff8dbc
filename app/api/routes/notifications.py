"""/notifications: the caller's notifications; services push new ones."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, status

from app.api.deps import NO_CONTROL, Ctx, CurrentUser, Cursor, Limit, ServiceCaller
from app.api.errors import error_responses
from app.schemas.api import (
    Count,
    NotificationCreate,
    NotificationPublic,
    NotificationsCreated,
    NotificationsPublic,
)
from app.services import notifications

router = APIRouter(prefix="/notifications", tags=["notifications"])


@router.get("", response_model=NotificationsPublic, responses=error_responses(422))
async def list_notifications(
    user: CurrentUser,
    ctx: Ctx,
    unread_only: bool = False,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> dict[str, object]:
    """The caller's notifications, newest first."""
    items, next_cursor = await notifications.page(
        ctx, user_id=user.user_id, unread_only=unread_only, limit=limit, cursor=cursor
    )
    return {"items": items, "next_cursor": next_cursor}


@router.post("/read-all", response_model=Count)
async def read_all(user: CurrentUser, ctx: Ctx) -> dict[str, int]:
    """Mark every unread notification of the caller read."""
    return {"updated": await notifications.mark_all_read(ctx, user_id=user.user_id)}


@router.post(
    "/{notification_id}/read",
    response_model=NotificationPublic,
    responses=error_responses(404, 422),
)
async def read_one(
    notification_id: Annotated[str, Path(min_length=1, max_length=64, pattern=NO_CONTROL)],
    user: CurrentUser,
    ctx: Ctx,
) -> dict[str, object]:
    """Mark one of the caller's notifications read (404 for anyone else's)."""
    return await notifications.mark_read(ctx, user_id=user.user_id, notification_id=notification_id)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=NotificationsCreated,
    responses=error_responses(400, 403, 422),
)
async def push(body: NotificationCreate, caller: ServiceCaller, ctx: Ctx) -> dict[str, object]:
    """Service token only: store one notification per user and push it live."""
    created = await notifications.push(
        ctx, user_ids=body.user_ids, type=body.type, title=body.title, content=body.content
    )
    # Each item is its notification's event data (NotificationPublic keeps its fields only).
    return {
        "items": [{**data, "read_at": None} for data in created],
        "user_ids": [data["user_id"] for data in created],
    }
