"""Authorization matrix (SPEC §4, §5, §11): who may do what, and 401 for every bad token."""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient
from jose import jwt

from app.security import encode_token
from tests.support.services import Users
from tests.support.tokens import SECRET, bearer

V1 = "/api/v1"
MISSING_GROUP = "6f1c1f4e-0000-4000-8000-000000000000"


@dataclass(frozen=True)
class World:
    group_id: str
    owner: str
    member: str
    other_member: str
    outsider: str


@pytest.fixture
def world(api: TestClient, u: Users) -> World:
    """Alice owns a group with Bob and Carol and one message; Mallory is in a group of her own."""
    created = api.post(
        f"{V1}/groups", json={"name": "g", "member_ids": [u.bob, u.carol]}, headers=bearer(u.alice)
    )
    group_id = created.json()["group_id"]
    sent = api.post(
        f"{V1}/groups/{group_id}/messages", json={"content": "hi"}, headers=bearer(u.alice)
    )
    assert sent.status_code == 201
    api.post(f"{V1}/groups", json={"name": "mine"}, headers=bearer(u.mallory)).raise_for_status()
    return World(group_id, u.alice, u.bob, u.carol, u.mallory)


@dataclass(frozen=True)
class Endpoint:
    name: str
    method: str
    path: str  # {group_id}, {member}, {newcomer} are filled in
    body: dict[str, Any] | None
    owner_only: bool
    ok: int

    def call(self, api: TestClient, caller: str, w: World, group_id: str | None = None) -> Any:
        path = self.path.format(
            group_id=group_id or w.group_id, member=w.other_member, newcomer=f"{caller}-new"
        )
        body = self.body
        if body is not None:
            body = json.loads(json.dumps(body).replace("{newcomer}", f"{caller}-new"))
        return api.request(self.method, f"{V1}{path}", json=body, headers=bearer(caller))


GROUP_ENDPOINTS = [
    Endpoint("history", "GET", "/groups/{group_id}/messages", None, False, 200),
    Endpoint("send", "POST", "/groups/{group_id}/messages", {"content": "x"}, False, 201),
    Endpoint("read", "POST", "/groups/{group_id}/read", {"seq": 1}, False, 200),
    Endpoint("online", "GET", "/groups/{group_id}/online", None, False, 200),
    Endpoint(
        "add member", "POST", "/groups/{group_id}/members", {"user_id": "{newcomer}"}, True, 201
    ),
    Endpoint("remove member", "DELETE", "/groups/{group_id}/members/{member}", None, True, 204),
]


@pytest.mark.parametrize("endpoint", GROUP_ENDPOINTS, ids=lambda e: e.name)
def test_outsider_gets_404_like_for_a_missing_group(
    api: TestClient, world: World, endpoint: Endpoint
) -> None:
    foreign = endpoint.call(api, world.outsider, world)
    missing = endpoint.call(api, world.outsider, world, group_id=MISSING_GROUP)
    assert foreign.status_code == 404, foreign.text
    assert missing.status_code == 404, missing.text
    assert foreign.json() == missing.json()
    assert world.group_id not in foreign.text


@pytest.mark.parametrize("endpoint", GROUP_ENDPOINTS, ids=lambda e: e.name)
def test_member_and_owner(api: TestClient, world: World, endpoint: Endpoint) -> None:
    as_member = endpoint.call(api, world.member, world)
    if endpoint.owner_only:
        assert as_member.status_code == 403, as_member.text
        assert isinstance(as_member.json()["detail"], str)
    else:
        assert as_member.status_code == endpoint.ok, as_member.text
    as_owner = endpoint.call(api, world.owner, world)
    assert as_owner.status_code == endpoint.ok, as_owner.text


def test_member_403_changes_nothing(api: TestClient, world: World) -> None:
    def groups_of(user: str) -> set[str]:
        items = api.get(f"{V1}/groups", headers=bearer(user)).json()["items"]
        return {g["group_id"] for g in items}

    api.post(
        f"{V1}/groups/{world.group_id}/members",
        json={"user_id": world.outsider},
        headers=bearer(world.member),
    )
    api.delete(
        f"{V1}/groups/{world.group_id}/members/{world.other_member}", headers=bearer(world.member)
    )
    assert world.group_id in groups_of(world.other_member)
    assert world.group_id not in groups_of(world.outsider)


def test_outsider_learns_nothing_from_lists(api: TestClient, world: World) -> None:
    groups = api.get(f"{V1}/groups", headers=bearer(world.outsider)).json()["items"]
    assert world.group_id not in {g["group_id"] for g in groups}
    offline = api.get(f"{V1}/messages/offline", headers=bearer(world.outsider)).json()
    assert all(m["group_id"] != world.group_id for m in offline["items"])


def test_nobody_reads_another_users_notifications(api: TestClient, u: Users) -> None:
    service = bearer("svc", role="service")
    pushed = api.post(
        f"{V1}/notifications",
        json={"user_ids": [u.alice], "type": "t", "title": "private"},
        headers=service,
    ).json()["items"][0]
    listing = api.get(f"{V1}/notifications", headers=bearer(u.mallory)).json()
    assert listing == {"items": [], "next_cursor": None}
    steal = api.post(
        f"{V1}/notifications/{pushed['notification_id']}/read", headers=bearer(u.mallory)
    )
    assert steal.status_code == 404
    assert "private" not in steal.text
    assert api.post(f"{V1}/notifications/read-all", headers=bearer(u.mallory)).json() == {
        "updated": 0
    }
    mine = api.get(f"{V1}/notifications", headers=bearer(u.alice)).json()["items"]
    assert [(n["title"], n["read_at"]) for n in mine] == [("private", None)]


def test_service_token_is_not_a_member_anywhere(api: TestClient, world: World) -> None:
    response = api.get(
        f"{V1}/groups/{world.group_id}/messages", headers=bearer("svc", role="service")
    )
    assert response.status_code == 404


# -- 401 on every route --------------------------------------------------------------------------


def _b64(obj: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")


def _later() -> int:
    return int(time.time()) + 3600


BAD_AUTH: dict[str, dict[str, str]] = {
    "missing": {},
    "expired": {"Authorization": f"Bearer {encode_token('alice', secret=SECRET, ttl=-10)}"},
    "wrong secret": {
        "Authorization": f"Bearer {encode_token('alice', secret='not-the-secret-0123456789')}"
    },
    "wrong alg": {
        "Authorization": f"Bearer {encode_token('alice', secret=SECRET, algorithm='HS512')}"
    },
    "alg none": {
        "Authorization": f"Bearer {_b64({'alg': 'none'})}.{_b64({'sub': 'a', 'exp': _later()})}."
    },
    "no exp": {"Authorization": f"Bearer {jwt.encode({'sub': 'alice'}, SECRET)}"},
    "null exp": {"Authorization": f"Bearer {jwt.encode({'sub': 'a', 'exp': None}, SECRET)}"},
    "no sub": {"Authorization": f"Bearer {jwt.encode({'exp': _later()}, SECRET)}"},
    "NUL in sub": {
        "Authorization": "Bearer " + jwt.encode({"sub": "a\x00", "exp": _later()}, SECRET)
    },
    "garbage": {"Authorization": "Bearer not.a.jwt"},
    "empty bearer": {"Authorization": "Bearer "},
    "basic scheme": {"Authorization": "Basic YWxpY2U6c2VjcmV0"},
    "raw token": {"Authorization": encode_token("alice", secret=SECRET)},
    "huge": {"Authorization": "Bearer " + "a" * 9000},
}


def api_routes(api: TestClient) -> list[tuple[str, str]]:
    paths = api.get("/openapi.json").json()["paths"]
    return [
        (method.upper(), path)
        for path, operations in paths.items()
        if path.startswith(V1)
        for method in operations
    ]


def test_route_table_is_complete(api: TestClient) -> None:
    assert len(api_routes(api)) == 13


@pytest.mark.parametrize("auth", BAD_AUTH, ids=str)
def test_every_route_needs_a_valid_token(api: TestClient, auth: str) -> None:
    for method, path in api_routes(api):
        url = path.format(group_id=MISSING_GROUP, user_id="bob", notification_id=MISSING_GROUP)
        body: dict[str, Any] | None = None if method in ("GET", "DELETE") else {}
        response = api.request(method, url, json=body, headers=BAD_AUTH[auth])
        assert response.status_code == 401, f"{method} {path}: {response.text}"
        detail = response.json()["detail"]
        assert isinstance(detail, str) and detail, f"{method} {path}"
        assert response.headers.get("www-authenticate", "").lower().startswith("bearer")


def test_expired_token_says_so(api: TestClient) -> None:
    response = api.get(f"{V1}/groups", headers=BAD_AUTH["expired"])
    assert response.status_code == 401
    assert "expired" in response.json()["detail"]


def test_valid_token_passes(api: TestClient) -> None:
    response = api.get(f"{V1}/groups", headers=bearer("alice"))
    assert response.status_code == 200
    lower = api.get(
        f"{V1}/groups", headers={"Authorization": f"bearer {encode_token('a', secret=SECRET)}"}
    )
    assert lower.status_code == 200  # the scheme is case-insensitive


def test_health_and_ready_need_no_token(api: TestClient) -> None:
    assert api.get("/health").status_code == 200
    assert api.get("/ready").status_code == 200
