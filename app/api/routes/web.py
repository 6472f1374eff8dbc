"""The demo page at /, the SDK and assets under /static/, and the protocol's AsyncAPI document.

In embedded/dev mode (`settings.is_dev`) a development login mints tokens for any user:
`POST /api/v1/dev/token {"user_id", "name"?}` → `{"token", "user_id", "name", "expires_at"}`.
Outside dev mode that route does not exist (404 for every method) and it is never in the
OpenAPI schema.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.routing import APIRoute
from pydantic import StringConstraints
from starlette.routing import Match
from starlette.types import Scope

from app.config import Settings
from app.errors import NotFound
from app.schemas.api import StrictModel, UserIdStr
from app.security import encode_token

STATIC_DIR = Path(__file__).resolve().parents[2] / "static"
INDEX_HTML = STATIC_DIR / "index.html"
ASYNCAPI_JSON = STATIC_DIR / "asyncapi.json"
DEV_TOKEN_PATH = "/api/v1/dev/token"

# The page loads only its own script, style and socket; pictures of image messages come from
# anywhere over http(s). Nothing inline runs, whatever a message contains.
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' http: https: data:; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
DEV_FLAG_OFF = '<meta name="campushub-dev-login" content="false">'
DEV_FLAG_ON = '<meta name="campushub-dev-login" content="true">'

router = APIRouter(include_in_schema=False)


def _settings(scope: Scope) -> Settings | None:
    ctx = (scope.get("state") or {}).get("ctx")
    return getattr(ctx, "settings", None)


def dev_enabled(scope: Scope) -> bool:
    settings = _settings(scope)
    return settings is not None and settings.is_dev


class DevOnlyRoute(APIRoute):
    """A route that exists only while the app runs in embedded/dev mode."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if not dev_enabled(scope):
            return Match.NONE, {}
        return super().matches(scope)


@router.get("/", response_class=HTMLResponse)
def index(request: Request) -> HTMLResponse:
    """The demo single-page app; it offers the dev login only when the server allows it."""
    html = INDEX_HTML.read_text(encoding="utf-8")
    if dev_enabled(request.scope):
        html = html.replace(DEV_FLAG_OFF, DEV_FLAG_ON, 1)
    return HTMLResponse(
        html,
        headers={
            "Content-Security-Policy": PAGE_CSP,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-cache",
        },
    )


@router.get("/asyncapi.json")
def asyncapi() -> FileResponse:
    """AsyncAPI 3.0 description of the /ws protocol (SPEC §3)."""
    return FileResponse(ASYNCAPI_JSON, media_type="application/json")


DisplayName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]


class DevTokenIn(StrictModel):
    user_id: UserIdStr
    name: DisplayName | None = None


dev_router = APIRouter(include_in_schema=False, route_class=DevOnlyRoute)


@dev_router.post(DEV_TOKEN_PATH)
async def dev_token(body: DevTokenIn, request: Request) -> dict[str, Any]:
    """Embedded/dev mode only: a user token for anyone, signed with the app's secret."""
    settings = _settings(request.scope)
    if settings is None or not settings.is_dev:
        raise NotFound()
    name = body.name or body.user_id
    token = encode_token(
        body.user_id,
        secret=settings.JWT_SECRET,
        algorithm=settings.JWT_ALGORITHM,
        name=name,
        ttl=settings.JWT_DEV_TTL,
    )
    expires_at = (int(time.time()) + settings.JWT_DEV_TTL) * 1000
    return {"token": token, "user_id": body.user_id, "name": name, "expires_at": expires_at}


router.include_router(dev_router)
