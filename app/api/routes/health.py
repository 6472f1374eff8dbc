"""/health (liveness, no dependencies) and /ready (database reachable and migrated, bus
reachable)."""

from __future__ import annotations

import asyncio
import contextlib

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

from app.db.migrate import database_revision

router = APIRouter(tags=["health"])


@router.get("/health")
async def health() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/ready", responses={503: {"description": "not ready: see `checks`"}})
async def ready(request: Request) -> JSONResponse:
    """Readiness: 200 when the database answers and is migrated for this version (`schema`),
    the bus answers, the fan-out reader advances and the instance is not shutting down; 503
    otherwise."""
    state = request.state
    checks: dict[str, bool] = {"shutting_down": bool(state.lifecycle.shutting_down)}
    checks["database"] = checks["schema"] = False
    with contextlib.suppress(Exception):  # what did not answer stays False
        async with asyncio.timeout(2):
            async with state.ctx.sessions() as session:
                await session.execute(text("SELECT 1"))
                checks["database"] = True
                checks["schema"] = state.schema.usable(await database_revision(session))
    try:
        async with asyncio.timeout(2):
            checks["bus"] = bool(await state.ctx.bus.healthy())
    except Exception:
        checks["bus"] = False
    hub = getattr(state, "hub", None)
    if hub is not None:
        checks["fanout"] = hub.reader_alive()
    ok = checks.pop("shutting_down") is False and all(checks.values())
    body = {"status": "ready" if ok else "not ready", "checks": checks}
    return JSONResponse(body, status_code=200 if ok else 503)
