"""REST messages: history paging, send (idempotency, limits), read marks, /messages/offline."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.support.services import Users
from tests.support.shapes import MESSAGE_FIELDS
from tests.support.tokens import bearer, token

V1 = "/api/v1"
ACK_KEYS = {"message_id", "group_id", "seq", "created_at", "success"}


def create_group(api: TestClient, owner: str, members: list[str]) -> str:
    response = api.post(
        f"{V1}/groups", json={"name": "g", "member_ids": members}, headers=bearer(owner)
    )
    assert response.status_code == 201, response.text
    return str(response.json()["group_id"])


def post(api: TestClient, user: str, group_id: str, body: dict[str, Any]) -> Any:
    return api.post(f"{V1}/groups/{group_id}/messages", json=body, headers=bearer(user))


def send(api: TestClient, user: str, group_id: str, content: str) -> dict[str, Any]:
    response = post(api, user, group_id, {"msg_type": 1, "content": content})
    assert response.status_code == 201, response.text
    return dict(response.json())


def history(api: TestClient, user: str, group_id: str, **params: Any) -> Any:
    return api.get(f"{V1}/groups/{group_id}/messages", params=params, headers=bearer(user))


def all_messages(api: TestClient, user: str, group_id: str) -> list[dict[str, Any]]:
    response = history(api, user, group_id, after_seq=0, limit=200)
    assert response.status_code == 200
    return list(response.json()["items"])


def read(api: TestClient, user: str, group_id: str, seq: int) -> Any:
    return api.post(f"{V1}/groups/{group_id}/read", json={"seq": seq}, headers=bearer(user))


def offline(api: TestClient, user: str, **params: Any) -> Any:
    return api.get(f"{V1}/messages/offline", params=params, headers=bearer(user))


def send_direct(api: TestClient, plan: list[tuple[str, str, str]]) -> list[dict[str, Any]]:
    """Send (user, group_id, content) messages through the app's own send pipeline, in order,
    without an HTTP round trip each (fixtures only: REST sending has tests of its own)."""
    from app.services import chat
    from app.services.chat import Sender

    async def go() -> list[dict[str, Any]]:
        acks = []
        for user, group_id, content in plan:
            result = await chat.send_message(
                api.app_state["ctx"],
                sender=Sender(user, user.title()),
                group_id=group_id,
                msg_type=1,
                content=content,
            )
            acks.append(result.ack)
        return acks

    assert api.portal is not None
    return api.portal.call(go)


@pytest.fixture
def twelve(api: TestClient, u: Users) -> str:
    """A group of Alice and Bob with messages "m1".."m12" (seq 1..12)."""
    group_id = create_group(api, u.alice, [u.bob])
    send_direct(api, [(u.alice if n % 3 else u.bob, group_id, f"m{n}") for n in range(1, 13)])
    return group_id


# -- history -----------------------------------------------------------------------------------


def test_history_shape(api: TestClient, u: Users, twelve: str) -> None:
    items = all_messages(api, u.bob, twelve)
    assert [m["seq"] for m in items] == list(range(1, 13))
    assert [m["content"] for m in items] == [f"m{n}" for n in range(1, 13)]
    for m in items:
        assert set(m) == MESSAGE_FIELDS
        assert m["group_id"] == twelve and m["msg_type"] == 1 and m["image_url"] == ""
        assert isinstance(m["created_at"], int) and m["created_at"] > 1_600_000_000_000
    assert items[0]["sender_id"] == u.alice and items[0]["sender_name"] == u.alice.title()
    assert items[2]["sender_id"] == u.bob
    assert len({m["message_id"] for m in items}) == 12
    created = [m["created_at"] for m in items]
    assert created == sorted(created)


def test_history_default_is_the_latest(api: TestClient, u: Users, twelve: str) -> None:
    body = history(api, u.bob, twelve, limit=5).json()
    assert [m["seq"] for m in body["items"]] == [8, 9, 10, 11, 12]
    assert body["next_cursor"] == "8"
    everything = history(api, u.bob, twelve).json()
    assert [m["seq"] for m in everything["items"]] == list(range(1, 13))
    assert everything["next_cursor"] is None


def test_history_after_seq(api: TestClient, u: Users, twelve: str) -> None:
    body = history(api, u.alice, twelve, after_seq=3, limit=4).json()
    assert [m["seq"] for m in body["items"]] == [4, 5, 6, 7]
    assert body["next_cursor"] == "7"
    tail = history(api, u.alice, twelve, after_seq=9).json()
    assert [m["seq"] for m in tail["items"]] == [10, 11, 12]
    assert tail["next_cursor"] is None
    beyond = history(api, u.alice, twelve, after_seq=12).json()
    assert beyond == {"items": [], "next_cursor": None}
    assert history(api, u.alice, twelve, after_seq=1000).json()["items"] == []


def test_history_before_seq(api: TestClient, u: Users, twelve: str) -> None:
    body = history(api, u.alice, twelve, before_seq=10, limit=3).json()
    assert [m["seq"] for m in body["items"]] == [7, 8, 9]
    assert body["next_cursor"] == "7"
    head = history(api, u.alice, twelve, before_seq=4, limit=3).json()
    assert [m["seq"] for m in head["items"]] == [1, 2, 3]
    assert head["next_cursor"] is None
    assert history(api, u.alice, twelve, before_seq=1).json() == {"items": [], "next_cursor": None}
    assert [m["seq"] for m in history(api, u.alice, twelve, before_seq=1000).json()["items"]] == [
        *range(1, 13)
    ]


PAGE_SIZES = [1, 2, 5, 11, 12, 13, 200]


def test_history_between_after_and_before(api: TestClient, u: Users, twelve: str) -> None:
    window = history(api, u.bob, twelve, after_seq=3, before_seq=8).json()
    assert [m["seq"] for m in window["items"]] == [4, 5, 6, 7]
    assert window["next_cursor"] is None
    first = history(api, u.bob, twelve, after_seq=3, before_seq=8, limit=3).json()
    assert [m["seq"] for m in first["items"]] == [4, 5, 6]
    assert first["next_cursor"] == "6"
    rest = history(api, u.bob, twelve, after_seq=6, before_seq=8, limit=3).json()
    assert [m["seq"] for m in rest["items"]] == [7]
    assert rest["next_cursor"] is None
    exact = history(api, u.bob, twelve, after_seq=3, before_seq=7, limit=3).json()
    assert [m["seq"] for m in exact["items"]] == [4, 5, 6] and exact["next_cursor"] is None
    empty = history(api, u.bob, twelve, after_seq=5, before_seq=5).json()
    assert empty == {"items": [], "next_cursor": None}


def test_history_paging_forwards_visits_everything_once(
    api: TestClient, u: Users, twelve: str
) -> None:
    for limit in PAGE_SIZES:
        seqs: list[int] = []
        cursor = "0"
        for _ in range(20):
            body = history(api, u.bob, twelve, after_seq=cursor, limit=limit).json()
            assert 0 < len(body["items"]) <= limit
            seqs += [m["seq"] for m in body["items"]]
            cursor = body["next_cursor"]
            if cursor is None:
                break
        assert seqs == list(range(1, 13)), f"limit={limit}"


def test_history_paging_backwards_visits_everything_once(
    api: TestClient, u: Users, twelve: str
) -> None:
    for limit in PAGE_SIZES:
        pages: list[list[int]] = []
        params: dict[str, Any] = {"limit": limit}
        for _ in range(20):
            body = history(api, u.bob, twelve, **params).json()
            page = [m["seq"] for m in body["items"]]
            assert page == sorted(page) and 0 < len(page) <= limit
            pages.append(page)
            if body["next_cursor"] is None:
                break
            params = {"limit": limit, "before_seq": body["next_cursor"]}
        seqs = [seq for page in reversed(pages) for seq in page]
        assert seqs == list(range(1, 13)), f"limit={limit}"


def test_history_limit_bounds(api: TestClient, u: Users, twelve: str) -> None:
    for bad in (0, -1, 201, 10_000):
        response = history(api, u.bob, twelve, limit=bad)
        assert response.status_code == 422, bad
        assert "detail" in response.json()
    assert history(api, u.bob, twelve, limit=200).status_code == 200
    assert len(history(api, u.bob, twelve, limit=1).json()["items"]) == 1


def test_history_default_limit_is_50(api: TestClient, u: Users) -> None:
    group_id = create_group(api, u.alice, [])
    send_direct(api, [(u.alice, group_id, f"n{n}") for n in range(51)])
    latest = history(api, u.alice, group_id).json()
    assert [m["seq"] for m in latest["items"]] == list(range(2, 52))
    assert latest["next_cursor"] == "2"
    first = history(api, u.alice, group_id, after_seq=0).json()
    assert [m["seq"] for m in first["items"]] == list(range(1, 51))
    assert first["next_cursor"] == "50"


def test_history_of_an_empty_group(api: TestClient, u: Users) -> None:
    group_id = create_group(api, u.alice, [])
    assert history(api, u.alice, group_id).json() == {"items": [], "next_cursor": None}
    assert history(api, u.alice, group_id, after_seq=0).json() == {"items": [], "next_cursor": None}


# -- send --------------------------------------------------------------------------------------


def test_send_text(api: TestClient, u: Users) -> None:
    group_id = create_group(api, u.alice, [u.bob])
    response = post(api, u.alice, group_id, {"msg_type": 1, "content": "Hi Bob"})
    assert response.status_code == 201, response.text
    ack = response.json()
    assert set(ack) == ACK_KEYS
    assert (ack["group_id"], ack["seq"], ack["success"]) == (group_id, 1, True)
    [stored] = all_messages(api, u.bob, group_id)
    assert stored["message_id"] == ack["message_id"]
    assert stored["created_at"] == ack["created_at"]
    assert (stored["content"], stored["sender_id"]) == ("Hi Bob", u.alice)
    assert send(api, u.bob, group_id, "Hi Alice")["seq"] == 2


def test_send_defaults_to_text(api: TestClient, u: Users) -> None:
    group_id = create_group(api, u.alice, [])
    response = post(api, u.alice, group_id, {"content": "no msg_type"})
    assert response.status_code == 201
    assert all_messages(api, u.alice, group_id)[0]["msg_type"] == 1


def test_sender_name_comes_from_the_token(api: TestClient, u: Users) -> None:
    group_id = create_group(api, u.alice, [])
    named = {"Authorization": f"Bearer {token(u.alice, name='Alice Liddell')}"}
    api.post(
        f"{V1}/groups/{group_id}/messages", json={"content": "named"}, headers=named
    ).raise_for_status()
    from app.security import encode_token
    from tests.support.tokens import SECRET

    nameless = {"Authorization": f"Bearer {encode_token(u.alice, secret=SECRET)}"}
    api.post(
        f"{V1}/groups/{group_id}/messages", json={"content": "nameless"}, headers=nameless
    ).raise_for_status()
    names = [m["sender_name"] for m in all_messages(api, u.alice, group_id)]
    assert names == ["Alice Liddell", u.alice]


def test_send_is_idempotent_per_client_msg_id(api: TestClient, u: Users) -> None:
    group_id = create_group(api, u.alice, [u.bob])
    body = {"msg_type": 1, "content": "once", "client_msg_id": "c-1"}
    first = post(api, u.alice, group_id, body)
    assert first.status_code == 201
    retry = post(api, u.alice, group_id, body)
    assert retry.status_code == 200, retry.text
    assert retry.json() == first.json()
    # A retry that differs in content still answers with the original.
    changed = post(api, u.alice, group_id, {**body, "content": "twice?"})
    assert changed.status_code == 200
    assert changed.json()["message_id"] == first.json()["message_id"]
    stored = all_messages(api, u.bob, group_id)
    assert [(m["seq"], m["content"]) for m in stored] == [(1, "once")]
    groups = api.get(f"{V1}/groups", headers=bearer(u.bob)).json()["items"]
    assert (groups[0]["last_seq"], groups[0]["unread_count"]) == (1, 1)
    # The next new message takes the next seq: the retries did not use one up.
    assert send(api, u.alice, group_id, "next")["seq"] == 2


def test_client_msg_id_is_scoped_to_sender_and_group(api: TestClient, u: Users) -> None:
    group_id = create_group(api, u.alice, [u.bob])
    other = create_group(api, u.alice, [])
    body = {"msg_type": 1, "content": "hello", "client_msg_id": "same"}
    a = post(api, u.alice, group_id, body)
    b = post(api, u.bob, group_id, body)
    c = post(api, u.alice, other, body)
    assert (a.status_code, b.status_code, c.status_code) == (201, 201, 201)
    assert (a.json()["seq"], b.json()["seq"], c.json()["seq"]) == (1, 2, 1)
    assert len({a.json()["message_id"], b.json()["message_id"], c.json()["message_id"]}) == 3


def test_send_without_client_msg_id_stores_each(api: TestClient, u: Users) -> None:
    group_id = create_group(api, u.alice, [])
    for _ in range(3):
        assert post(api, u.alice, group_id, {"content": "same"}).status_code == 201
    assert [m["seq"] for m in all_messages(api, u.alice, group_id)] == [1, 2, 3]


@pytest.mark.parametrize(
    "url", ["https://cdn.example/cat.png", "http://img.example:8080/a/b.jpg?size=2"]
)
def test_send_image(api: TestClient, u: Users, url: str) -> None:
    group_id = create_group(api, u.alice, [])
    response = post(api, u.alice, group_id, {"msg_type": 2, "image_url": url})
    assert response.status_code == 201, response.text
    [stored] = all_messages(api, u.alice, group_id)
    assert (stored["msg_type"], stored["image_url"], stored["content"]) == (2, url, "")
    captioned = post(api, u.alice, group_id, {"msg_type": 2, "image_url": url, "content": "cap"})
    assert captioned.status_code == 201


@pytest.mark.parametrize(
    "url",
    [
        None,
        "",
        "cat.png",
        "ftp://cdn.example/cat.png",
        "javascript:alert(1)",
        "data:image/png;base64,AAAA",
        "https://",
        "file:///etc/passwd",
    ],
)
def test_image_needs_http_url(api: TestClient, u: Users, url: str | None) -> None:
    group_id = create_group(api, u.alice, [])
    body: dict[str, Any] = {"msg_type": 2, "content": "caption"}
    if url is not None:
        body["image_url"] = url
    response = post(api, u.alice, group_id, body)
    assert response.status_code == 400, response.text
    assert "image_url" in response.json()["detail"]
    assert all_messages(api, u.alice, group_id) == []


@pytest.mark.parametrize(
    ("char", "utf8_bytes"), [("a", 1), ("é", 2), ("中", 3), ("😀", 4)], ids=["1b", "2b", "3b", "4b"]
)
def test_content_limit_counts_code_points(
    api: TestClient, u: Users, char: str, utf8_bytes: int
) -> None:
    group_id = create_group(api, u.alice, [])
    at_limit = char * 4000
    assert len(at_limit.encode()) == 4000 * utf8_bytes
    response = post(api, u.alice, group_id, {"content": at_limit})
    assert response.status_code == 201, response.text
    assert all_messages(api, u.alice, group_id)[0]["content"] == at_limit
    over = post(api, u.alice, group_id, {"content": char * 4001})
    assert over.status_code == 413, over.text
    assert "4000" in over.json()["detail"]
    assert len(all_messages(api, u.alice, group_id)) == 1


def test_megabyte_content_is_too_large(api: TestClient, u: Users) -> None:
    group_id = create_group(api, u.alice, [])
    response = post(api, u.alice, group_id, {"content": "x" * 1_048_576})
    assert response.status_code == 413
    assert len(response.content) < 10_000  # the answer does not echo the content back


@pytest.mark.parametrize("content", ["", "   ", "\n\t", None])
def test_empty_text_rejected(api: TestClient, u: Users, content: str | None) -> None:
    group_id = create_group(api, u.alice, [])
    body: dict[str, Any] = {"msg_type": 1}
    if content is not None:
        body["content"] = content
    response = post(api, u.alice, group_id, body)
    assert response.status_code in (400, 422)
    assert isinstance(response.json()["detail"], str | list)
    assert all_messages(api, u.alice, group_id) == []


def test_send_to_foreign_or_missing_group(api: TestClient, u: Users) -> None:
    group_id = create_group(api, u.alice, [])
    foreign = post(api, u.mallory, group_id, {"content": "let me in"})
    missing = post(api, u.mallory, "11111111-2222-3333-4444-555555555555", {"content": "x"})
    assert foreign.status_code == missing.status_code == 404
    assert foreign.json() == missing.json()
    assert all_messages(api, u.alice, group_id) == []


# -- read marks --------------------------------------------------------------------------------


def test_mark_read(api: TestClient, u: Users, twelve: str) -> None:
    response = read(api, u.bob, twelve, 5)
    assert response.status_code == 200
    assert response.json() == {"group_id": twelve, "last_read_seq": 5}


def test_mark_read_clamps_to_last_seq(api: TestClient, u: Users, twelve: str) -> None:
    assert read(api, u.bob, twelve, 999).json()["last_read_seq"] == 12
    send(api, u.alice, twelve, "m13")
    groups = api.get(f"{V1}/groups", headers=bearer(u.bob)).json()["items"]
    assert (groups[0]["last_read_seq"], groups[0]["unread_count"]) == (12, 1)


def test_mark_read_never_moves_backwards(api: TestClient, u: Users, twelve: str) -> None:
    assert read(api, u.bob, twelve, 7).json()["last_read_seq"] == 7
    assert read(api, u.bob, twelve, 3).json()["last_read_seq"] == 7
    assert read(api, u.bob, twelve, 0).json()["last_read_seq"] == 7
    assert read(api, u.bob, twelve, 7).json()["last_read_seq"] == 7
    assert read(api, u.bob, twelve, 8).json()["last_read_seq"] == 8
    groups = api.get(f"{V1}/groups", headers=bearer(u.bob)).json()["items"]
    assert groups[0]["last_read_seq"] == 8


def test_mark_read_on_empty_group(api: TestClient, u: Users) -> None:
    group_id = create_group(api, u.alice, [])
    assert read(api, u.alice, group_id, 0).json() == {"group_id": group_id, "last_read_seq": 0}
    assert read(api, u.alice, group_id, 5).json()["last_read_seq"] == 0


def test_mark_read_is_per_user(api: TestClient, u: Users, twelve: str) -> None:
    read(api, u.bob, twelve, 10)
    groups = api.get(f"{V1}/groups", headers=bearer(u.alice)).json()["items"]
    assert groups[0]["last_read_seq"] == 0


def test_mark_read_needs_membership(api: TestClient, u: Users, twelve: str) -> None:
    assert read(api, u.mallory, twelve, 1).status_code == 404
    assert read(api, u.mallory, "no-such-group", 1).status_code == 404


# -- offline -----------------------------------------------------------------------------------


@pytest.fixture
def inbox(api: TestClient, u: Users) -> list[dict[str, Any]]:
    """Messages across several groups; returns Bob's unread ones in sending order."""
    g1 = create_group(api, u.alice, [u.bob, u.carol])
    g2 = create_group(api, u.carol, [u.bob])
    g3 = create_group(api, u.bob, [u.alice])
    elsewhere = create_group(api, u.alice, [u.carol])  # Bob is not in it
    plan = [
        (u.alice, g1),
        (u.carol, g2),
        (u.bob, g1),  # his own
        (u.alice, g3),
        (u.carol, elsewhere),
        (u.carol, g1),
        (u.bob, g3),  # his own
        (u.carol, g2),
        (u.alice, g1),
        (u.alice, g3),
        (u.carol, g2),
    ]
    expected = []
    acks = send_direct(
        api, [(sender, group_id, f"o{n}") for n, (sender, group_id) in enumerate(plan)]
    )
    for (sender, group_id), ack in zip(plan, acks, strict=True):
        if sender != u.bob and group_id != elsewhere:
            expected.append({"message_id": ack["message_id"], "group_id": group_id})
    # Bob has read g1 up to its second message (seq 2), which hides o0.
    assert read(api, u.bob, g1, 2).json()["last_read_seq"] == 2
    return expected[1:]


def test_offline_lists_exactly_the_unread(
    api: TestClient, u: Users, inbox: list[dict[str, Any]]
) -> None:
    body = offline(api, u.bob).json()
    assert body["next_cursor"] is None
    assert [m["message_id"] for m in body["items"]] == [m["message_id"] for m in inbox]
    assert all(set(m) == MESSAGE_FIELDS for m in body["items"])
    assert all(m["sender_id"] != u.bob for m in body["items"])
    created = [m["created_at"] for m in body["items"]]
    assert created == sorted(created)


def test_offline_cursor_paging(api: TestClient, u: Users, inbox: list[dict[str, Any]]) -> None:
    for limit in (1, 2, 3, 7, 8, 9):
        seen: list[str] = []
        params: dict[str, Any] = {"limit": limit}
        for _ in range(20):
            body = offline(api, u.bob, **params).json()
            assert 0 < len(body["items"]) <= limit
            seen += [m["message_id"] for m in body["items"]]
            if body["next_cursor"] is None:
                break
            params = {"limit": limit, "cursor": body["next_cursor"]}
        assert seen == [m["message_id"] for m in inbox], f"limit={limit}"


def test_offline_shrinks_as_groups_are_read(
    api: TestClient, u: Users, inbox: list[dict[str, Any]]
) -> None:
    for group_id in dict.fromkeys(m["group_id"] for m in inbox):
        before = {m["message_id"] for m in offline(api, u.bob).json()["items"]}
        read(api, u.bob, group_id, 10_000)
        after = {m["message_id"] for m in offline(api, u.bob).json()["items"]}
        assert before - after == {m["message_id"] for m in inbox if m["group_id"] == group_id}
    assert offline(api, u.bob).json() == {"items": [], "next_cursor": None}


def test_offline_forgets_a_group_left(
    api: TestClient, u: Users, inbox: list[dict[str, Any]]
) -> None:
    leaving = inbox[0]["group_id"]
    response = api.delete(f"{V1}/groups/{leaving}/members/{u.bob}", headers=bearer(u.bob))
    assert response.status_code == 204
    items = offline(api, u.bob).json()["items"]
    assert [m["message_id"] for m in items] == [
        m["message_id"] for m in inbox if m["group_id"] != leaving
    ]


def test_offline_empty(api: TestClient, u: Users) -> None:
    assert offline(api, u.nobody).json() == {"items": [], "next_cursor": None}


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    [
        "not-a-cursor",
        "!!!!",
        "abc",
        _b64(b"no separator"),
        _b64(b"soon|abc"),
        _b64(b"1700000000.0|"),
        _b64(b"1e400|abc"),
        _b64(b"nan|abc"),
        _b64(b"1700000000.0|" + b"x" * 65),
        _b64(b"\xff\xfe|abc"),
        _b64(b"1700000000.0|a\x00b"),
        "x" * 513,
    ],
)
def test_offline_malformed_cursor(api: TestClient, u: Users, cursor: str) -> None:
    response = offline(api, u.bob, cursor=cursor)
    assert response.status_code == 422, response.text
    assert "detail" in response.json()
