"""REST /notifications: service push, newest-first listing, cursor paging, read marks."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.support.services import Users
from tests.support.tokens import bearer

V1 = "/api/v1"
NOTIFICATION_KEYS = {"notification_id", "type", "title", "content", "created_at", "read_at"}


SERVICE = bearer("billing-service", role="service")


def push(api: TestClient, user_ids: list[str], title: str = "t", **extra: Any) -> Any:
    body = {"user_ids": user_ids, "type": "system", "title": title, **extra}
    return api.post(f"{V1}/notifications", json=body, headers=SERVICE)


def push_one(api: TestClient, user: str, title: str) -> str:
    response = push(api, [user], title)
    assert response.status_code == 201, response.text
    return str(response.json()["items"][0]["notification_id"])


def listing(api: TestClient, user: str, **params: Any) -> Any:
    response = api.get(f"{V1}/notifications", params=params, headers=bearer(user))
    assert response.status_code == 200, response.text
    return response.json()


def titles(api: TestClient, user: str, **params: Any) -> list[str]:
    return [n["title"] for n in listing(api, user, limit=200, **params)["items"]]


def mark(api: TestClient, user: str, notification_id: str) -> Any:
    return api.post(f"{V1}/notifications/{notification_id}/read", headers=bearer(user))


# -- push --------------------------------------------------------------------------------------


def test_service_pushes(api: TestClient, u: Users) -> None:
    before = int(time.time() * 1000)
    response = push(api, [u.bob, u.carol, u.bob], "Exam moved", content="Room 101", type="exam")
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["user_ids"] == [u.bob, u.carol]  # one per user, duplicates dropped
    assert len(body["items"]) == 2
    for item in body["items"]:
        assert set(item) == NOTIFICATION_KEYS
        assert (item["type"], item["title"], item["content"]) == ("exam", "Exam moved", "Room 101")
        assert item["read_at"] is None
        assert item["created_at"] >= before - 1000
    assert body["items"][0]["notification_id"] != body["items"][1]["notification_id"]
    for user, item in zip([u.bob, u.carol], body["items"], strict=True):
        [listed] = listing(api, user)["items"]
        assert listed == item


def test_push_content_defaults_to_empty(api: TestClient, u: Users) -> None:
    response = push(api, [u.bob], "No body")
    assert response.status_code == 201
    assert response.json()["items"][0]["content"] == ""


def test_user_token_cannot_push(api: TestClient, u: Users) -> None:
    response = api.post(
        f"{V1}/notifications",
        json={"user_ids": [u.bob], "type": "system", "title": "fake"},
        headers=bearer(u.mallory),
    )
    assert response.status_code == 403
    assert "service" in response.json()["detail"]
    assert listing(api, u.bob)["items"] == []


def test_push_needs_a_token(api: TestClient, u: Users) -> None:
    response = api.post(
        f"{V1}/notifications", json={"user_ids": [u.bob], "type": "system", "title": "anon"}
    )
    assert response.status_code == 401
    assert listing(api, u.bob)["items"] == []


# -- list --------------------------------------------------------------------------------------


def test_list_newest_first(api: TestClient, u: Users) -> None:
    for n in range(4):
        push_one(api, u.bob, f"n{n}")
    body = listing(api, u.bob)
    assert [n["title"] for n in body["items"]] == ["n3", "n2", "n1", "n0"]
    assert body["next_cursor"] is None
    created = [n["created_at"] for n in body["items"]]
    assert created == sorted(created, reverse=True)


def test_list_only_the_callers(api: TestClient, u: Users) -> None:
    push_one(api, u.bob, "for bob")
    push_one(api, u.carol, "for carol")
    assert titles(api, u.bob) == ["for bob"]
    assert titles(api, u.carol) == ["for carol"]
    assert listing(api, u.dave) == {"items": [], "next_cursor": None}


def test_unread_only(api: TestClient, u: Users) -> None:
    ids = [push_one(api, u.bob, f"n{n}") for n in range(4)]
    assert mark(api, u.bob, ids[1]).status_code == 200
    assert mark(api, u.bob, ids[3]).status_code == 200
    assert titles(api, u.bob, unread_only="true") == ["n2", "n0"]
    assert titles(api, u.bob, unread_only="false") == ["n3", "n2", "n1", "n0"]
    assert titles(api, u.bob) == ["n3", "n2", "n1", "n0"]


@pytest.mark.parametrize("unread_only", [False, True])
def test_cursor_paging(api: TestClient, u: Users, unread_only: bool) -> None:
    ids = [push_one(api, u.bob, f"n{n}") for n in range(8)]
    mark(api, u.bob, ids[5]).raise_for_status()
    expected = [f"n{n}" for n in reversed(range(8)) if not (unread_only and n == 5)]
    for limit in (1, 3, 7):
        seen: list[str] = []
        params: dict[str, Any] = {"limit": limit, "unread_only": unread_only}
        for _ in range(20):
            body = listing(api, u.bob, **params)
            assert 0 < len(body["items"]) <= limit
            seen += [n["title"] for n in body["items"]]
            if body["next_cursor"] is None:
                break
            params["cursor"] = body["next_cursor"]
        assert seen == expected, f"limit={limit}"


def test_cursor_paging_through_equal_timestamps(api: TestClient, u: Users) -> None:
    """Rows sharing created_at are ordered by id; the cursor visits each exactly once."""
    from app.db.base import utcnow
    from app.db.models import Notification
    from app.services.context import ServiceContext

    ctx: ServiceContext = api.app_state["ctx"]
    at = utcnow()
    ids = [str(uuid.uuid4()) for _ in range(7)]

    async def insert() -> None:
        async with ctx.session() as session:
            session.add_all(
                Notification(id=i, user_id=u.bob, type="t", title=i, content="", created_at=at)
                for i in ids
            )
            await session.commit()

    assert api.portal is not None
    api.portal.call(insert)
    newer = push_one(api, u.bob, "newer")
    for limit in (1, 2, 3):
        seen: list[str] = []
        params: dict[str, Any] = {"limit": limit}
        for _ in range(20):
            body = listing(api, u.bob, **params)
            seen += [n["notification_id"] for n in body["items"]]
            if body["next_cursor"] is None:
                break
            params["cursor"] = body["next_cursor"]
        assert seen == [newer, *sorted(ids, reverse=True)], f"limit={limit}"


@pytest.mark.parametrize("cursor", ["bogus", "!!", "MTIz", "x" * 513])
def test_malformed_cursor(api: TestClient, u: Users, cursor: str) -> None:
    response = api.get(f"{V1}/notifications", params={"cursor": cursor}, headers=bearer(u.bob))
    assert response.status_code == 422
    assert "detail" in response.json()


# -- read --------------------------------------------------------------------------------------


def test_mark_one_read(api: TestClient, u: Users) -> None:
    first = push_one(api, u.bob, "first")
    second = push_one(api, u.bob, "second")
    before = int(time.time() * 1000)
    response = mark(api, u.bob, first)
    assert response.status_code == 200
    body = response.json()
    assert set(body) == NOTIFICATION_KEYS
    assert body["notification_id"] == first and body["title"] == "first"
    assert before - 1000 <= body["read_at"] <= int(time.time() * 1000) + 1000
    # Marking again keeps the first read time.
    again = mark(api, u.bob, first)
    assert again.status_code == 200 and again.json()["read_at"] == body["read_at"]
    listed = {n["notification_id"]: n for n in listing(api, u.bob)["items"]}
    assert listed[first]["read_at"] == body["read_at"]
    assert listed[second]["read_at"] is None


def test_mark_someone_elses_notification(api: TestClient, u: Users) -> None:
    theirs = push_one(api, u.bob, "bob's")
    response = mark(api, u.mallory, theirs)
    assert response.status_code == 404
    missing = mark(api, u.mallory, "00000000-0000-0000-0000-000000000000")
    assert missing.status_code == 404
    assert response.json() == missing.json()
    assert listing(api, u.bob)["items"][0]["read_at"] is None


def test_read_all(api: TestClient, u: Users) -> None:
    ids = [push_one(api, u.bob, f"n{n}") for n in range(3)]
    push_one(api, u.carol, "carol's")
    mark(api, u.bob, ids[0]).raise_for_status()
    response = api.post(f"{V1}/notifications/read-all", headers=bearer(u.bob))
    assert response.status_code == 200
    assert response.json() == {"updated": 2}
    assert titles(api, u.bob, unread_only=True) == []
    assert all(n["read_at"] is not None for n in listing(api, u.bob)["items"])
    again = api.post(f"{V1}/notifications/read-all", headers=bearer(u.bob))
    assert again.json() == {"updated": 0}
    assert titles(api, u.carol, unread_only=True) == ["carol's"]


def test_read_all_with_nothing(api: TestClient, u: Users) -> None:
    response = api.post(f"{V1}/notifications/read-all", headers=bearer(u.nobody))
    assert response.status_code == 200 and response.json() == {"updated": 0}
