"""/groups: create and list groups, members, history, send, read marks, who is online."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status

from app.api.deps import Ctx, CurrentUser, Cursor, GroupIdPath, Limit, UserIdPath
from app.api.errors import error_responses
from app.schemas.api import (
    GroupCreate,
    GroupPublic,
    GroupsPublic,
    MemberAdd,
    MemberPublic,
    MessageCreate,
    MessagesPublic,
    OnlinePublic,
    ReadMarkIn,
    ReadMarkPublic,
    SendAck,
)
from app.services import chat, groups
from app.services.chat import Sender

router = APIRouter(prefix="/groups", tags=["groups"])

SeqQuery = Annotated[int | None, Query(ge=0, le=2**62)]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=GroupPublic,
    responses=error_responses(400, 422),
)
async def create_group(body: GroupCreate, user: CurrentUser, ctx: Ctx) -> dict[str, object]:
    """Create a group; the caller becomes its owner and a member."""
    return await groups.create_group(
        ctx, owner_id=user.user_id, name=body.name, member_ids=body.member_ids
    )


@router.get("", response_model=GroupsPublic, responses=error_responses(422))
async def list_groups(
    user: CurrentUser, ctx: Ctx, limit: Limit = 50, cursor: Cursor = None
) -> dict[str, object]:
    """The caller's groups with last seq, read mark and unread count (others' messages)."""
    items, next_cursor = await groups.list_groups(
        ctx, user_id=user.user_id, limit=limit, after_id=cursor
    )
    return {"items": items, "next_cursor": next_cursor}


@router.post(
    "/{group_id}/members",
    status_code=status.HTTP_201_CREATED,
    response_model=MemberPublic,
    responses=error_responses(400, 403, 404, 409, 422),
)
async def add_member(
    group_id: GroupIdPath, body: MemberAdd, user: CurrentUser, ctx: Ctx
) -> dict[str, object]:
    """The owner adds a member (403 for other members, 409 if already a member)."""
    return await groups.add_member(
        ctx, caller_id=user.user_id, group_id=group_id, user_id=body.user_id
    )


@router.delete(
    "/{group_id}/members/{user_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(403, 404, 409, 422),
)
async def remove_member(
    group_id: GroupIdPath,
    user_id: UserIdPath,
    user: CurrentUser,
    ctx: Ctx,
) -> Response:
    """The owner removes a member, or a member leaves; live delivery stops at once."""
    await groups.remove_member(ctx, caller_id=user.user_id, group_id=group_id, user_id=user_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/{group_id}/messages", response_model=MessagesPublic, responses=error_responses(404, 422)
)
async def history(
    group_id: GroupIdPath,
    user: CurrentUser,
    ctx: Ctx,
    after_seq: SeqQuery = None,
    before_seq: SeqQuery = None,
    limit: Limit = 50,
) -> dict[str, object]:
    """History by seq, ascending. `after_seq` pages forwards; `before_seq` (or neither: the
    latest) pages backwards; both: the seqs strictly between them, paging forwards.
    `next_cursor` is the value for the same parameter (`after_seq` when both), or null."""
    if after_seq is not None:
        items, _ = await chat.messages_after(
            ctx, user_id=user.user_id, group_id=group_id, after_seq=after_seq, limit=limit + 1
        )
        if before_seq is not None:
            items = [m for m in items if m["seq"] < before_seq]
        more = len(items) > limit
        items = items[:limit]
        return {"items": items, "next_cursor": str(items[-1]["seq"]) if more else None}
    items = await chat.messages_before(
        ctx, user_id=user.user_id, group_id=group_id, before_seq=before_seq, limit=limit + 1
    )
    more = len(items) > limit
    items = items[-limit:]
    return {"items": items, "next_cursor": str(items[0]["seq"]) if more else None}


@router.post(
    "/{group_id}/messages",
    status_code=status.HTTP_201_CREATED,
    response_model=SendAck,
    responses={
        200: {"model": SendAck, "description": "idempotent retry: the original message"},
        **error_responses(400, 404, 413, 422),
    },
)
async def send(
    group_id: GroupIdPath, body: MessageCreate, user: CurrentUser, ctx: Ctx, response: Response
) -> dict[str, object]:
    """Send a message through the same pipeline as the WebSocket (201; 200 on a retry)."""
    result = await chat.send_message(
        ctx,
        sender=Sender(user.user_id, user.name),
        group_id=group_id,
        msg_type=body.msg_type,
        content=body.content,
        image_url=body.image_url,
        client_msg_id=body.client_msg_id,
    )
    if not result.created:
        response.status_code = status.HTTP_200_OK
    return result.ack


@router.post(
    "/{group_id}/read", response_model=ReadMarkPublic, responses=error_responses(400, 404, 422)
)
async def mark_read(
    group_id: GroupIdPath, body: ReadMarkIn, user: CurrentUser, ctx: Ctx
) -> dict[str, object]:
    """Mark read up to `seq` (clamped to the last seq; never moves backwards)."""
    mark = await chat.mark_read(ctx, user_id=user.user_id, group_id=group_id, seq=body.seq)
    return {"group_id": group_id, "last_read_seq": mark}


@router.get("/{group_id}/online", response_model=OnlinePublic, responses=error_responses(404, 422))
async def online(
    group_id: GroupIdPath, user: CurrentUser, ctx: Ctx, request: Request
) -> dict[str, object]:
    """User ids of the group's members online now, on any instance."""
    members = await groups.member_ids(ctx, user_id=user.user_id, group_id=group_id)
    user_ids = await request.state.presence.online(members)
    return {"group_id": group_id, "user_ids": sorted(user_ids)}
