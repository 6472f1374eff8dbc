"""JWT handling (SPEC §5): only the configured algorithm, exp and sub required, claims mapped."""

from __future__ import annotations

import base64
import json
import time

import pytest
from jose import jwt

from app.errors import NotAuthenticated
from app.security import Claims, decode_token, encode_token

SECRET = "unit-test-secret-0123456789"


def _b64(obj: dict[str, object]) -> str:
    raw = json.dumps(obj, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode(token: object, algorithm: str = "HS256") -> Claims:
    return decode_token(token, secret=SECRET, algorithm=algorithm)


def _raw(claims: dict[str, object], *, algorithm: str = "HS256", secret: str = SECRET) -> str:
    return str(jwt.encode(claims, secret, algorithm=algorithm))


def _future() -> int:
    return int(time.time()) + 600


@pytest.mark.parametrize("algorithm", ["HS256", "HS384", "HS512"])
def test_round_trip(algorithm: str) -> None:
    token = encode_token(
        "alice", secret=SECRET, algorithm=algorithm, name="Alice A.", role="service", ttl=120
    )
    claims = _decode(token, algorithm)
    assert claims.user_id == "alice"
    assert claims.name == "Alice A."
    assert claims.role == "service"
    assert claims.is_service
    assert abs(claims.expires_at - (time.time() + 120)) <= 2


def test_encode_sets_exp_from_ttl() -> None:
    before = int(time.time())
    payload = jwt.get_unverified_claims(encode_token("bob", secret=SECRET, ttl=300))
    assert payload["sub"] == "bob"
    assert before + 300 <= payload["exp"] <= int(time.time()) + 300
    assert "name" not in payload and "role" not in payload


@pytest.mark.parametrize("other", ["HS384", "HS512"])
def test_other_hmac_algorithm_rejected(other: str) -> None:
    token = encode_token("alice", secret=SECRET, algorithm=other)
    with pytest.raises(NotAuthenticated, match="algorithm"):
        _decode(token, "HS256")


@pytest.mark.parametrize("alg", ["none", "None", "NONE", ""])
def test_unsigned_token_rejected(alg: str) -> None:
    token = f"{_b64({'alg': alg, 'typ': 'JWT'})}.{_b64({'sub': 'alice', 'exp': _future()})}."
    with pytest.raises(NotAuthenticated, match="algorithm not accepted"):
        _decode(token)


def test_header_claiming_hs256_with_forged_signature_rejected() -> None:
    header = _b64({"alg": "HS256", "typ": "JWT"})
    payload = _b64({"sub": "mallory", "exp": _future()})
    with pytest.raises(NotAuthenticated, match="invalid"):
        _decode(f"{header}.{payload}.{_b64({'sig': 'forged'})}")


def test_wrong_secret_rejected() -> None:
    token = encode_token("alice", secret="another-secret-0123456789")
    with pytest.raises(NotAuthenticated, match="invalid"):
        _decode(token)


def test_exp_required() -> None:
    with pytest.raises(NotAuthenticated):
        _decode(_raw({"sub": "alice"}))


def test_sub_required() -> None:
    with pytest.raises(NotAuthenticated):
        _decode(_raw({"exp": _future(), "name": "Alice"}))


@pytest.mark.parametrize("sub", ["", "   ", 42, ["alice"], "x" * 65, "a\x00b", "bob\n", "\x7f"])
def test_bad_subject_rejected(sub: object) -> None:
    with pytest.raises(NotAuthenticated):
        _decode(_raw({"sub": sub, "exp": _future()}))


@pytest.mark.parametrize(
    "exp", [str(2**40), True, None, "soon", [1], {"at": 1}, float("inf"), float("nan")]
)
def test_exp_must_be_a_number(exp: object) -> None:
    with pytest.raises(NotAuthenticated):
        _decode(_raw({"sub": "alice", "exp": exp}))


@pytest.mark.parametrize("claim", ["iat", "nbf"])
@pytest.mark.parametrize("value", [None, [1], "later", float("inf")])
def test_malformed_time_claims_rejected(claim: str, value: object) -> None:
    with pytest.raises(NotAuthenticated):
        _decode(_raw({"sub": "alice", "exp": _future(), claim: value}))


def test_not_yet_valid_token_rejected() -> None:
    with pytest.raises(NotAuthenticated):
        _decode(_raw({"sub": "alice", "exp": _future(), "nbf": _future()}))


def test_subject_at_limit_accepted() -> None:
    assert _decode(_raw({"sub": "u" * 64, "exp": _future()})).user_id == "u" * 64


def test_expired_token_message_mentions_expiry() -> None:
    token = encode_token("alice", secret=SECRET, ttl=-60)
    with pytest.raises(NotAuthenticated) as info:
        _decode(token)
    assert "expired" in info.value.message
    assert info.value.code == 401


def test_name_claim_becomes_name() -> None:
    assert _decode(encode_token("alice", secret=SECRET, name="Alice Liddell")).name == (
        "Alice Liddell"
    )


@pytest.mark.parametrize("name", [None, "", "   ", 7, {"first": "A"}, "Al\x00ice"])
def test_name_falls_back_to_sub(name: object) -> None:
    claims: dict[str, object] = {"sub": "alice", "exp": _future()}
    if name is not None:
        claims["name"] = name
    assert _decode(_raw(claims)).name == "alice"


def test_role_service() -> None:
    claims = _decode(encode_token("billing", secret=SECRET, role="service"))
    assert claims.role == "service" and claims.is_service


@pytest.mark.parametrize("role", [None, "admin", "Service", 1, ["service"]])
def test_other_roles_are_not_service(role: object) -> None:
    claims: dict[str, object] = {"sub": "alice", "exp": _future()}
    if role is not None:
        claims["role"] = role
    decoded = _decode(_raw(claims))
    assert not decoded.is_service
    assert decoded.role in (None, role)


@pytest.mark.parametrize(
    "token",
    [
        None,
        12345,
        b"bytes.are.not",
        ["a", "b"],
        {"token": "x"},
        "",
        "garbage",
        "a.b",
        "a.b.c",
        "....",
        "Bearer x.y.z",
        "ünïcödé.ünïcödé.ünïcödé",
        "x" * 8193,
        encode_token("alice", secret=SECRET) + "x" * 9000,
    ],
    ids=lambda v: repr(v)[:24],
)
def test_malformed_tokens_raise_not_authenticated(token: object) -> None:
    with pytest.raises(NotAuthenticated) as info:
        _decode(token)
    assert info.value.code == 401


def test_truncated_and_tampered_tokens_rejected() -> None:
    token = encode_token("alice", secret=SECRET, name="Alice")
    header, payload, signature = token.split(".")
    for bad in (
        token[:-3],
        f"{header}.{payload}",
        f"{header}.{_b64({'sub': 'root', 'exp': _future()})}.{signature}",
    ):
        with pytest.raises(NotAuthenticated):
            _decode(bad)
