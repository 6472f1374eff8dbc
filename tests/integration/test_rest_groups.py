"""REST /groups: create, list, members, who is online; plus /health, /ready, /docs (SPEC §4)."""

from __future__ import annotations

import time
from typing import Any

from fastapi.testclient import TestClient

from tests.support.services import Users
from tests.support.tokens import bearer

V1 = "/api/v1"
GROUP_KEYS = {
    "group_id",
    "name",
    "owner_id",
    "last_seq",
    "last_read_seq",
    "unread_count",
    "created_at",
}


def create_group(
    api: TestClient, owner: str, members: list[str] | None = None, name: str = "Chess club"
) -> str:
    response = api.post(
        f"{V1}/groups", json={"name": name, "member_ids": members or []}, headers=bearer(owner)
    )
    assert response.status_code == 201, response.text
    return str(response.json()["group_id"])


def send(api: TestClient, user: str, group_id: str, content: str) -> dict[str, Any]:
    response = api.post(
        f"{V1}/groups/{group_id}/messages",
        json={"msg_type": 1, "content": content},
        headers=bearer(user),
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


def my_groups(api: TestClient, user: str) -> dict[str, dict[str, Any]]:
    response = api.get(f"{V1}/groups", params={"limit": 200}, headers=bearer(user))
    assert response.status_code == 200, response.text
    return {g["group_id"]: g for g in response.json()["items"]}


def add(api: TestClient, caller: str, group_id: str, user_id: str) -> Any:
    return api.post(
        f"{V1}/groups/{group_id}/members", json={"user_id": user_id}, headers=bearer(caller)
    )


def remove(api: TestClient, caller: str, group_id: str, user_id: str) -> Any:
    return api.delete(f"{V1}/groups/{group_id}/members/{user_id}", headers=bearer(caller))


# -- create ------------------------------------------------------------------------------------


def test_create_group(api: TestClient, u: Users) -> None:
    before = int(time.time() * 1000)
    response = api.post(
        f"{V1}/groups",
        json={"name": "  Chess club  ", "member_ids": [u.bob, u.carol]},
        headers=bearer(u.alice),
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert set(body) == GROUP_KEYS
    assert body["name"] == "Chess club"
    assert body["owner_id"] == u.alice
    assert (body["last_seq"], body["last_read_seq"], body["unread_count"]) == (0, 0, 0)
    assert before - 1000 <= body["created_at"] <= int(time.time() * 1000) + 1000
    assert len(body["group_id"]) == 36  # a UUID
    for user in (u.alice, u.bob, u.carol):
        assert my_groups(api, user)[body["group_id"]]["owner_id"] == u.alice
    assert body["group_id"] not in my_groups(api, u.dave)


def member_roles(api: TestClient, group_id: str) -> dict[str, str]:
    """{user_id: role} as stored."""
    from sqlalchemy import select

    from app.db.models import GroupMember

    async def query() -> dict[str, str]:
        async with api.app_state["ctx"].session() as session:
            rows = await session.execute(
                select(GroupMember.user_id, GroupMember.role).where(
                    GroupMember.group_id == group_id
                )
            )
            return {user_id: role for user_id, role in rows}

    assert api.portal is not None
    return api.portal.call(query)


def test_owner_is_a_member_with_role_owner(api: TestClient, u: Users) -> None:
    group_id = create_group(api, u.alice, [u.bob])
    assert member_roles(api, group_id) == {u.alice: "owner", u.bob: "member"}
    # The owner may add members; a plain member may not.
    assert add(api, u.alice, group_id, u.carol).status_code == 201
    assert add(api, u.bob, group_id, u.dave).status_code == 403
    # The owner is already a member, and cannot leave.
    assert add(api, u.alice, group_id, u.alice).status_code == 409
    assert remove(api, u.alice, group_id, u.alice).status_code == 409


def test_create_group_with_duplicate_member_ids(api: TestClient, u: Users) -> None:
    group_id = create_group(api, u.alice, [u.bob, u.bob, u.alice, u.carol, u.carol])
    assert member_roles(api, group_id) == {u.alice: "owner", u.bob: "member", u.carol: "member"}
    for user in (u.alice, u.bob, u.carol):
        assert group_id in my_groups(api, user)
    # The owner listed as a member stays the owner.
    assert add(api, u.alice, group_id, u.dave).status_code == 201
    # Each listed member was added once, as a plain member.
    for user in (u.bob, u.carol):
        assert add(api, u.alice, group_id, user).status_code == 409
        assert add(api, user, group_id, u.erin).status_code == 403
    assert remove(api, u.bob, group_id, u.bob).status_code == 204
    assert group_id not in my_groups(api, u.bob)


def test_create_group_without_members(api: TestClient, u: Users) -> None:
    response = api.post(f"{V1}/groups", json={"name": "Solo"}, headers=bearer(u.alice))
    assert response.status_code == 201
    assert list(my_groups(api, u.alice)) == [response.json()["group_id"]]


# -- list --------------------------------------------------------------------------------------


def test_list_reports_last_seq_read_mark_and_unread(api: TestClient, u: Users) -> None:
    group_id = create_group(api, u.alice, [u.bob])
    other = create_group(api, u.bob, [u.alice], name="Other")
    send(api, u.alice, group_id, "1")
    send(api, u.alice, group_id, "2")
    send(api, u.bob, group_id, "3")
    send(api, u.alice, group_id, "4")
    send(api, u.alice, group_id, "5")

    bob = my_groups(api, u.bob)
    assert set(bob) == {group_id, other}
    assert set(bob[group_id]) == GROUP_KEYS
    assert bob[group_id]["last_seq"] == 5
    assert bob[group_id]["last_read_seq"] == 0
    assert bob[group_id]["unread_count"] == 4  # his own message is not unread
    assert bob[other] | {"created_at": 0} == {
        "group_id": other,
        "name": "Other",
        "owner_id": u.bob,
        "last_seq": 0,
        "last_read_seq": 0,
        "unread_count": 0,
        "created_at": 0,
    }
    alice = my_groups(api, u.alice)[group_id]
    assert (alice["last_seq"], alice["unread_count"]) == (5, 1)

    read = api.post(f"{V1}/groups/{group_id}/read", json={"seq": 2}, headers=bearer(u.bob))
    assert read.status_code == 200
    bob_group = my_groups(api, u.bob)[group_id]
    assert (bob_group["last_read_seq"], bob_group["unread_count"]) == (2, 2)
    api.post(f"{V1}/groups/{group_id}/read", json={"seq": 5}, headers=bearer(u.bob))
    bob_group = my_groups(api, u.bob)[group_id]
    assert (bob_group["last_read_seq"], bob_group["unread_count"]) == (5, 0)
    # Alice's view did not change with Bob's read mark.
    assert my_groups(api, u.alice)[group_id]["unread_count"] == 1


def test_list_pagination(api: TestClient, u: Users) -> None:
    created = {create_group(api, u.alice, name=f"g{i}") for i in range(5)}
    create_group(api, u.bob, name="not alice's")
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor is not None:
            params["cursor"] = cursor
        response = api.get(f"{V1}/groups", params=params, headers=bearer(u.alice))
        assert response.status_code == 200
        body = response.json()
        assert len(body["items"]) <= 2
        seen += [g["group_id"] for g in body["items"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
        assert pages < 10
    assert pages == 3
    assert len(seen) == len(set(seen)) == 5
    assert set(seen) == created
    assert seen == sorted(seen)  # a stable order


def test_list_default_limit_and_empty(api: TestClient, u: Users) -> None:
    body = api.get(f"{V1}/groups", headers=bearer(u.nobody)).json()
    assert body == {"items": [], "next_cursor": None}
    for _ in range(3):
        create_group(api, u.alice)
    body = api.get(f"{V1}/groups", headers=bearer(u.alice)).json()
    assert len(body["items"]) == 3 and body["next_cursor"] is None
    exact = api.get(f"{V1}/groups", params={"limit": 3}, headers=bearer(u.alice)).json()
    assert len(exact["items"]) == 3 and exact["next_cursor"] is None


# -- add member --------------------------------------------------------------------------------


def test_owner_adds_member(api: TestClient, u: Users) -> None:
    group_id = create_group(api, u.alice, [u.bob])
    send(api, u.alice, group_id, "before carol")
    before = int(time.time() * 1000)
    response = add(api, u.alice, group_id, u.carol)
    assert response.status_code == 201, response.text
    body = response.json()
    assert set(body) == {"group_id", "user_id", "role", "joined_at"}
    assert (body["group_id"], body["user_id"], body["role"]) == (group_id, u.carol, "member")
    assert body["joined_at"] >= before - 1000
    carol = my_groups(api, u.carol)[group_id]
    assert (carol["last_seq"], carol["unread_count"]) == (1, 1)
    # Carol is a full member now: she reads history and sends.
    history = api.get(f"{V1}/groups/{group_id}/messages", headers=bearer(u.carol))
    assert [m["content"] for m in history.json()["items"]] == ["before carol"]
    assert send(api, u.carol, group_id, "hi")["seq"] == 2


def test_member_cannot_add(api: TestClient, u: Users) -> None:
    group_id = create_group(api, u.alice, [u.bob])
    response = add(api, u.bob, group_id, u.carol)
    assert response.status_code == 403
    assert isinstance(response.json()["detail"], str)
    assert group_id not in my_groups(api, u.carol)


def test_non_member_cannot_add(api: TestClient, u: Users) -> None:
    group_id = create_group(api, u.alice, [u.bob])
    response = add(api, u.mallory, group_id, u.mallory)
    assert response.status_code == 404
    assert group_id not in my_groups(api, u.mallory)
    missing = add(api, u.mallory, "00000000-0000-0000-0000-000000000000", u.mallory)
    assert missing.status_code == 404
    assert missing.json() == response.json()


def test_add_existing_member_conflicts(api: TestClient, u: Users) -> None:
    group_id = create_group(api, u.alice, [u.bob])
    response = add(api, u.alice, group_id, u.bob)
    assert response.status_code == 409
    assert "member" in response.json()["detail"]


# -- remove member -----------------------------------------------------------------------------


def test_owner_removes_member(api: TestClient, u: Users) -> None:
    group_id = create_group(api, u.alice, [u.bob, u.carol])
    response = remove(api, u.alice, group_id, u.bob)
    assert response.status_code == 204
    assert response.content == b""
    assert group_id not in my_groups(api, u.bob)
    assert api.get(f"{V1}/groups/{group_id}/messages", headers=bearer(u.bob)).status_code == 404
    assert group_id in my_groups(api, u.carol)
    # Removed twice: Bob is no longer a member.
    assert remove(api, u.alice, group_id, u.bob).status_code == 404
    # And can be added back.
    assert add(api, u.alice, group_id, u.bob).status_code == 201
    assert group_id in my_groups(api, u.bob)


def test_member_leaves(api: TestClient, u: Users) -> None:
    group_id = create_group(api, u.alice, [u.bob, u.carol])
    send(api, u.alice, group_id, "hello")
    assert remove(api, u.carol, group_id, u.carol).status_code == 204
    assert group_id not in my_groups(api, u.carol)
    assert api.get(f"{V1}/messages/offline", headers=bearer(u.carol)).json()["items"] == []
    posted = api.post(
        f"{V1}/groups/{group_id}/messages",
        json={"msg_type": 1, "content": "still here?"},
        headers=bearer(u.carol),
    )
    assert posted.status_code == 404
    assert group_id in my_groups(api, u.bob)


def test_member_cannot_remove_others(api: TestClient, u: Users) -> None:
    group_id = create_group(api, u.alice, [u.bob, u.carol])
    assert remove(api, u.bob, group_id, u.carol).status_code == 403
    assert remove(api, u.bob, group_id, u.alice).status_code == 403
    assert group_id in my_groups(api, u.carol)


def test_owner_cannot_leave(api: TestClient, u: Users) -> None:
    group_id = create_group(api, u.alice, [u.bob])
    response = remove(api, u.alice, group_id, u.alice)
    assert response.status_code == 409
    assert "owner" in response.json()["detail"]
    assert group_id in my_groups(api, u.alice)


def test_non_member_cannot_remove(api: TestClient, u: Users) -> None:
    group_id = create_group(api, u.alice, [u.bob])
    assert remove(api, u.mallory, group_id, u.bob).status_code == 404
    assert remove(api, u.mallory, group_id, u.mallory).status_code == 404
    assert group_id in my_groups(api, u.bob)


def test_removing_a_user_who_is_not_a_member(api: TestClient, u: Users) -> None:
    group_id = create_group(api, u.alice, [u.bob])
    response = remove(api, u.alice, group_id, u.zed)
    assert response.status_code == 404
    assert "member" in response.json()["detail"]


# -- online ------------------------------------------------------------------------------------


def test_online_lists_nobody_without_connections(api: TestClient, u: Users) -> None:
    group_id = create_group(api, u.alice, [u.bob])
    response = api.get(f"{V1}/groups/{group_id}/online", headers=bearer(u.bob))
    assert response.status_code == 200
    assert response.json() == {"group_id": group_id, "user_ids": []}
    assert api.get(f"{V1}/groups/{group_id}/online", headers=bearer(u.eve)).status_code == 404


# -- health, readiness, docs -------------------------------------------------------------------


def test_health(api: TestClient) -> None:
    response = api.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_ready(api: TestClient) -> None:
    response = api.get("/ready")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ready"
    assert body["checks"]["database"] is True
    assert body["checks"]["bus"] is True


def test_docs_page(api: TestClient) -> None:
    response = api.get("/docs")
    assert response.status_code == 200
    assert "text/html" in response.headers["content-type"]
    assert "/openapi.json" in response.text


SPEC_ROUTES = [
    ("post", "/groups", "201"),
    ("get", "/groups", "200"),
    ("post", "/groups/{group_id}/members", "201"),
    ("delete", "/groups/{group_id}/members/{user_id}", "204"),
    ("get", "/groups/{group_id}/messages", "200"),
    ("post", "/groups/{group_id}/messages", "201"),
    ("post", "/groups/{group_id}/read", "200"),
    ("get", "/messages/offline", "200"),
    ("get", "/notifications", "200"),
    ("post", "/notifications/{notification_id}/read", "200"),
    ("post", "/notifications/read-all", "200"),
    ("post", "/notifications", "201"),
    ("get", "/groups/{group_id}/online", "200"),
]


def test_openapi_lists_every_spec_route_with_response_models(api: TestClient) -> None:
    schema = api.get("/openapi.json").json()
    paths = schema["paths"]
    components = schema["components"]["schemas"]
    for method, path, status in SPEC_ROUTES:
        operation = paths.get(f"{V1}{path}", {}).get(method)
        assert operation is not None, f"{method.upper()} {V1}{path} missing from OpenAPI"
        assert status in operation["responses"], f"{method.upper()} {path}: no {status}"
        if status == "204":
            continue
        content = operation["responses"][status]["content"]["application/json"]
        ref = content["schema"].get("$ref", "")
        assert ref.startswith("#/components/schemas/"), f"{method.upper()} {path}: no model"
        assert components[ref.rsplit("/", 1)[1]]["properties"]
        assert operation.get("security"), f"{method.upper()} {path}: bearer auth not declared"
    documented = {
        (method, path)
        for path, operations in paths.items()
        if path.startswith(V1)
        for method in operations
    }
    assert documented == {(m, f"{V1}{p}") for m, p, _ in SPEC_ROUTES}
    assert {"/health", "/ready"} <= set(paths)


def test_openapi_models_carry_the_spec_fields(api: TestClient) -> None:
    schema = api.get("/openapi.json").json()
    components = schema["components"]["schemas"]

    def fields(path: str, method: str, status: str) -> set[str]:
        operation = schema["paths"][f"{V1}{path}"][method]
        ref = operation["responses"][status]["content"]["application/json"]["schema"]["$ref"]
        return set(components[ref.rsplit("/", 1)[1]]["properties"])

    assert fields("/groups", "post", "201") == GROUP_KEYS
    assert fields("/groups", "get", "200") == {"items", "next_cursor"}
    assert fields("/groups/{group_id}/messages", "post", "201") >= {
        "message_id",
        "group_id",
        "seq",
        "created_at",
        "success",
    }
    assert fields("/notifications/{notification_id}/read", "post", "200") == {
        "notification_id",
        "type",
        "title",
        "content",
        "created_at",
        "read_at",
    }
