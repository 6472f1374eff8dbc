"""Test tokens signed with the test secret."""

from __future__ import annotations

from app.security import encode_token

SECRET = "test-secret-0123456789abcdef"


def token(user: str, *, name: str | None = None, role: str | None = None, ttl: int = 3600) -> str:
    return encode_token(user, secret=SECRET, name=name or user.title(), role=role, ttl=ttl)


def bearer(user: str, **kwargs: object) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(user, **kwargs)}"}  # type: ignore[arg-type]
