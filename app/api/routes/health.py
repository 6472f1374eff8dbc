"""/health (liveness, no dependencies) and /ready (database and bus reachable)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

router = APIRouter(tags=["health"])


@router.get("/health")
async def health() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/ready", responses={503: {"description": "not ready: see `checks`"}})
async def ready(request: Request) -> JSONResponse:
    """Readiness: 200 when the database and the bus answer, the fan-out reader advances and
    the instance is not shutting down; 503 otherwise."""
    state = request.state
    checks: dict[str, bool] = {"shutting_down": bool(state.lifecycle.shutting_down)}
    try:
        async with asyncio.timeout(2):
            async with state.ctx.sessions() as session:
                await session.execute(text("SELECT 1"))
        checks["database"] = True
    except Exception:
        checks["database"] = False
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
