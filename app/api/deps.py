"""Dependencies: the route vocabulary (current user, service caller, context, hub)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Path, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.config import Settings
from app.errors import Forbidden, NotAuthenticated
from app.security import Claims, decode_token
from app.services.context import ServiceContext

bearer = HTTPBearer(auto_error=False, description="JWT signed with JWT_SECRET (SPEC §5)")


def get_state(request: Request) -> Any:
    return request.state


async def get_ctx(request: Request) -> ServiceContext:
    ctx: ServiceContext = request.state.ctx
    return ctx


async def get_settings_dep(request: Request) -> Settings:
    settings: Settings = request.state.ctx.settings
    return settings


async def current_claims(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Claims:
    if credentials is None:
        raise NotAuthenticated("missing bearer token")
    settings: Settings = request.state.ctx.settings
    return decode_token(
        credentials.credentials, secret=settings.JWT_SECRET, algorithm=settings.JWT_ALGORITHM
    )


async def service_claims(claims: Annotated[Claims, Depends(current_claims)]) -> Claims:
    if not claims.is_service:
        raise Forbidden("a service token (role: service) is required")
    return claims


CurrentUser = Annotated[Claims, Depends(current_claims)]
ServiceCaller = Annotated[Claims, Depends(service_claims)]
Ctx = Annotated[ServiceContext, Depends(get_ctx)]
# Ids and cursors never hold control characters (Postgres cannot even store NUL): 422.
NO_CONTROL = r"^[^\x00-\x1f\x7f]*$"
GroupIdPath = Annotated[
    str, Path(min_length=1, max_length=64, pattern=NO_CONTROL, description="group id")
]
UserIdPath = Annotated[
    str, Path(min_length=1, max_length=64, pattern=NO_CONTROL, description="user id")
]
Limit = Annotated[int, Query(ge=1, le=200, description="page size (default 50, at most 200)")]
Cursor = Annotated[
    str | None,
    Query(max_length=512, pattern=NO_CONTROL, description="next_cursor of the previous page"),
]
