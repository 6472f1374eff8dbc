"""Domain errors shared by REST and WebSocket; each transport maps them in one place."""

from __future__ import annotations


class AppError(Exception):
    """An error with a status code that both transports understand (SPEC §3.5, §4)."""

    code: int = 400
    default_message: str = "bad request"

    def __init__(self, message: str | None = None) -> None:
        self.message = message or self.default_message
        super().__init__(self.message)


class BadRequest(AppError):
    code = 400
    default_message = "bad request"


class NotAuthenticated(AppError):
    code = 401
    default_message = "not authenticated"


class Forbidden(AppError):
    code = 403
    default_message = "forbidden"


class NotMember(Forbidden):
    default_message = "not a member of this group"


class NotFound(AppError):
    code = 404
    default_message = "not found"


class GroupNotFound(NotFound):
    default_message = "group not found"


class Conflict(AppError):
    code = 409
    default_message = "conflict"


class TooLarge(AppError):
    code = 413
    default_message = "too large"


class RateLimited(AppError):
    code = 429
    default_message = "rate limit exceeded"


class Unavailable(AppError):
    code = 503
    default_message = "storage or bus unavailable, retry later"
