"""JWT encode/decode with python-jose, pinned to the configured algorithm (SPEC §5)."""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

from jose import JWTError, jwk, jwt
from jose.backends.base import Key
from jose.exceptions import JWKError

from app.errors import NotAuthenticated

MAX_USER_ID_CHARS = 64


@dataclass(frozen=True, slots=True)
class Claims:
    user_id: str
    name: str
    expires_at: int  # Unix seconds
    role: str | None = None

    @property
    def is_service(self) -> bool:
        return self.role == "service"


def encode_token(
    user_id: str,
    *,
    secret: str,
    algorithm: str = "HS256",
    name: str | None = None,
    role: str | None = None,
    ttl: int = 86400,
) -> str:
    claims: dict[str, object] = {"sub": user_id, "exp": int(time.time()) + ttl}
    if name is not None:
        claims["name"] = name
    if role is not None:
        claims["role"] = role
    return str(jwt.encode(claims, secret, algorithm=algorithm))


@functools.lru_cache(maxsize=8)
def _verifying_key(secret: str, algorithm: str) -> Key | str:
    """The key object python-jose would otherwise build from the secret on every decode
    (~30 us of an auth's CPU); the secret itself for an algorithm it cannot build one for
    (the decode then rejects the token)."""
    try:
        return jwk.construct(secret, algorithm)
    except JWKError:
        return secret


def _reason(error: str) -> str:
    """The client-facing reason for python-jose's error message."""
    lowered = error.lower()
    if "expired" in lowered:
        return "token expired"
    if "alg value is not allowed" in lowered or "no algorithm" in lowered:
        return "token algorithm not accepted"
    return "token invalid"


def decode_token(token: object, *, secret: str, algorithm: str) -> Claims:
    """Return the token's claims or raise NotAuthenticated; only `algorithm` is accepted."""
    if not isinstance(token, str) or not token or len(token) > 8192:
        raise NotAuthenticated("token missing or malformed")
    try:
        # `algorithms` rejects a header naming any other algorithm ("none" included) before
        # the signature is looked at, so the header needs no separate look beforehand.
        payload = jwt.decode(
            token,
            _verifying_key(secret, algorithm),
            algorithms=[algorithm],
            options={"require_exp": True, "require_sub": True, "verify_aud": False},
        )
    except (JWTError, TypeError, ValueError, OverflowError) as exc:
        # python-jose lets TypeError/OverflowError out for `"exp": null`, `[..]` or `Infinity`.
        raise NotAuthenticated(_reason(str(exc))) from exc
    sub = payload.get("sub")
    if (
        not isinstance(sub, str)
        or not sub.strip()
        or len(sub) > MAX_USER_ID_CHARS
        or any(ord(c) < 32 or ord(c) == 127 for c in sub)  # Postgres cannot store NUL
    ):
        raise NotAuthenticated("token subject invalid")
    exp = payload.get("exp")
    if not isinstance(exp, int | float) or isinstance(exp, bool):
        raise NotAuthenticated("token expiry invalid")
    name = payload.get("name")
    role = payload.get("role")
    return Claims(
        user_id=sub,
        name=name if isinstance(name, str) and name.strip() and "\x00" not in name else sub,
        expires_at=int(exp),
        role=role if isinstance(role, str) else None,
    )
