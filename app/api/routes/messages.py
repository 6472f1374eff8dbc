"""/messages/offline: what the caller has not read yet, across all its groups."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import Ctx, CurrentUser, Cursor, Limit
from app.api.errors import error_responses
from app.schemas.api import MessagesPublic
from app.services import chat

router = APIRouter(prefix="/messages", tags=["messages"])


@router.get("/offline", response_model=MessagesPublic, responses=error_responses(422))
async def offline(
    user: CurrentUser, ctx: Ctx, limit: Limit = 50, cursor: Cursor = None
) -> dict[str, object]:
    """Messages after the caller's read mark in each of its groups, sent by others, oldest
    first; pass `next_cursor` back as `cursor` for the next page."""
    items, next_cursor = await chat.unread(ctx, user_id=user.user_id, limit=limit, cursor=cursor)
    return {"items": items, "next_cursor": next_cursor}
