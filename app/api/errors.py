"""Map domain errors to `{"detail": ...}` responses: the one place REST does it."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.routing import Match

from app.errors import AppError, NotMember
from app.schemas.api import ErrorOut, ValidationErrorOut

# What each status means on /api/v1, as the OpenAPI document tells it.
WHEN: dict[int, str] = {
    400: "the body is not JSON, or a field's value is refused (e.g. `msg_type`)",
    401: "missing, malformed or expired bearer token",
    403: "the caller may not do this (not the owner; not a service token)",
    404: "no such group for the caller (a group it is not a member of included), or no "
    "such member or notification",
    409: "conflicts with the current state (already a member; the owner cannot leave)",
    413: "content or image_url over its limit",
    422: "a field failed validation",
    503: "storage or bus unavailable; retry after `Retry-After` seconds",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for the errors a route can answer, all `{"detail": ...}`."""
    return {
        code: {"model": ValidationErrorOut if code == 422 else ErrorOut, "description": WHEN[code]}
        for code in codes
    }


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


METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this request's path."""
    routes = request.app.router.routes
    return [
        method
        for method in METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes
        )
    ]


async def http_error_handler(request: Request, exc: Exception) -> Response:
    """FastAPI's own, except that a 405's `Allow` names every method the path serves (RFC 9110
    §15.5.6): Starlette's names those of the first route on the path, so `OPTIONS /api/v1/groups`
    said `Allow: POST` though GET is served there too."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        exc.headers = {**(exc.headers or {}), "Allow": ", ".join(allowed_methods(request))}
    return await http_exception_handler(request, exc)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(AppError, app_error_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(HTTPException, http_error_handler)
