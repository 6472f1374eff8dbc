"""Map domain errors to `{"detail": ...}` responses: the one place REST does it."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from app.errors import AppError, NotMember


async def app_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AppError)
    if isinstance(exc, NotMember):
        # REST answers 404 both for a missing group and for someone else's group (SPEC §11).
        return JSONResponse({"detail": "group not found"}, status_code=404)
    headers = {"Retry-After": "1"} if exc.code in (429, 503) else None
    if exc.code == 401:
        headers = {"WWW-Authenticate": "Bearer"}  # RFC 9110 §15.5.2: a 401 names its scheme
    return JSONResponse({"detail": exc.message}, status_code=exc.code, headers=headers)


async def validation_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422 without echoing `input`: a 1 MB string came back whole, and a NaN or
    Infinity in the body (Python's json accepts them) made the response unrenderable (500)."""
    assert isinstance(exc, RequestValidationError)
    detail = [
        {"type": e.get("type"), "loc": list(e.get("loc", ())), "msg": str(e.get("msg", ""))}
        for e in exc.errors()
    ]
    return JSONResponse({"detail": detail}, status_code=422)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(AppError, app_error_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
