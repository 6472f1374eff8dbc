"""Map domain errors to `{"detail": ...}` responses: the one place REST does it."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from app.errors import AppError, NotMember


async def app_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AppError)
    if isinstance(exc, NotMember):
        # REST answers 404 both for a missing group and for someone else's group (SPEC §11).
        return JSONResponse({"detail": "group not found"}, status_code=404)
    headers = {"Retry-After": "1"} if exc.code in (429, 503) else None
    return JSONResponse({"detail": exc.message}, status_code=exc.code, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(AppError, app_error_handler)
