"""Bad bodies, paths and params: always a 4xx with JSON `{"detail": ...}`, never a 500."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.support.services import BACKENDS, shared_client
from tests.support.tokens import bearer

V1 = "/api/v1"
MB = "x" * (1 << 20)
OWNER = "bad-input-owner"
SERVICE = "bad-input-service"


@dataclass(frozen=True)
class Case:
    id: str
    method: str
    path: str  # {gid} is the owner's group, {nid} one of the owner's notifications
    json: Any = None
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    service: bool = False
    status: int | None = None  # the exact status when it matters; any 4xx otherwise


@pytest.fixture(scope="module", params=BACKENDS)
def api(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestClient]:
    yield from shared_client(request, tmp_path_factory)


@pytest.fixture(scope="module")
def ids(api: TestClient) -> dict[str, str]:
    group = api.post(
        f"{V1}/groups", json={"name": "target", "member_ids": ["bob"]}, headers=bearer(OWNER)
    )
    note = api.post(
        f"{V1}/notifications",
        json={"user_ids": [OWNER], "type": "t", "title": "n"},
        headers=bearer(SERVICE, role="service"),
    )
    return {"gid": group.json()["group_id"], "nid": note.json()["items"][0]["notification_id"]}


MSG = "/groups/{gid}/messages"
READ = "/groups/{gid}/read"
MEMBERS = "/groups/{gid}/members"
JSON = {"content-type": "application/json"}

CASES = [
    # POST /groups
    Case("group name int", "POST", "/groups", {"name": 123}, status=422),
    Case("group name list", "POST", "/groups", {"name": ["a"]}, status=422),
    Case("group name null", "POST", "/groups", {"name": None}, status=422),
    Case("group name missing", "POST", "/groups", {"member_ids": []}, status=422),
    Case("group name empty", "POST", "/groups", {"name": ""}, status=422),
    Case("group name blank", "POST", "/groups", {"name": "   "}, status=422),
    Case("group name 101", "POST", "/groups", {"name": "n" * 101}, status=422),
    Case("group name 1MB", "POST", "/groups", {"name": MB}, status=422),
    Case("group name NUL", "POST", "/groups", {"name": "a\x00b"}, status=422),
    Case("member_ids string", "POST", "/groups", {"name": "g", "member_ids": "bob"}, status=422),
    Case("member_ids ints", "POST", "/groups", {"name": "g", "member_ids": [1, 2]}, status=422),
    Case("member_ids bool", "POST", "/groups", {"name": "g", "member_ids": [True]}, status=422),
    Case("member_ids empty id", "POST", "/groups", {"name": "g", "member_ids": [""]}, status=422),
    Case("member_ids 65", "POST", "/groups", {"name": "g", "member_ids": ["u" * 65]}, status=422),
    Case("member_ids NUL", "POST", "/groups", {"name": "g", "member_ids": ["b\x00"]}, status=422),
    Case("member_ids newline", "POST", "/groups", {"name": "g", "member_ids": ["a\nb"]}),
    Case(
        "member_ids 1001",
        "POST",
        "/groups",
        {"name": "g", "member_ids": [f"u{i}" for i in range(1001)]},
        status=422,
    ),
    Case("group unknown field", "POST", "/groups", {"name": "g", "owner_id": "x"}, status=422),
    Case("group body list", "POST", "/groups", [{"name": "g"}], status=422),
    Case("group body string", "POST", "/groups", "g", status=422),
    Case("group body null", "POST", "/groups", content=b"null", headers=JSON, status=422),
    Case("group body not JSON", "POST", "/groups", content=b"name=g", headers=JSON),
    Case("group body truncated", "POST", "/groups", content=b'{"name": "g"', headers=JSON),
    Case("group body empty", "POST", "/groups", content=b"", headers=JSON, status=422),
    Case("group no body", "POST", "/groups", status=422),
    Case(
        "group text/plain",
        "POST",
        "/groups",
        content=b'{"name": "g"}',
        headers={"content-type": "text/plain"},
        status=422,
    ),
    Case(
        "group form",
        "POST",
        "/groups",
        content=b"name=g",
        headers={"content-type": "application/x-www-form-urlencoded"},
        status=422,
    ),
    Case(
        "group xml",
        "POST",
        "/groups",
        content=b"<name>g</name>",
        headers={"content-type": "application/xml"},
    ),
    Case("group bad utf-8", "POST", "/groups", content=b'{"name": "\xff\xfe"}', headers=JSON),
    Case("group deep nesting", "POST", "/groups", content=b"[" * 100_000, headers=JSON),
    # POST /groups/{gid}/messages
    Case("msg_type string", "POST", MSG, {"msg_type": "1", "content": "x"}, status=422),
    Case("msg_type true", "POST", MSG, {"msg_type": True, "content": "x"}, status=422),
    Case("msg_type float", "POST", MSG, {"msg_type": 1.0, "content": "x"}, status=422),
    Case("msg_type 3", "POST", MSG, {"msg_type": 3, "content": "x"}, status=422),
    Case("msg_type 0", "POST", MSG, {"msg_type": 0, "content": "x"}, status=422),
    Case("msg_type null", "POST", MSG, {"msg_type": None, "content": "x"}, status=422),
    Case("content int", "POST", MSG, {"content": 5}, status=422),
    Case("content list", "POST", MSG, {"content": ["x"]}, status=422),
    Case("content object", "POST", MSG, {"content": {"text": "x"}}, status=422),
    Case("content 1MB", "POST", MSG, {"content": MB}, status=413),
    Case("content NUL", "POST", MSG, {"content": "a\x00b"}, status=422),
    Case("content empty", "POST", MSG, {"content": ""}, status=400),
    Case("image_url int", "POST", MSG, {"msg_type": 2, "image_url": 1}, status=422),
    Case("image_url 1MB", "POST", MSG, {"msg_type": 2, "image_url": "https://x/" + MB}),
    Case("image_url ftp", "POST", MSG, {"msg_type": 2, "image_url": "ftp://x/y"}, status=400),
    Case("client_msg_id empty", "POST", MSG, {"content": "x", "client_msg_id": ""}, status=422),
    Case("client_msg_id 65", "POST", MSG, {"content": "x", "client_msg_id": "c" * 65}, status=422),
    Case("client_msg_id int", "POST", MSG, {"content": "x", "client_msg_id": 7}, status=422),
    Case("client_msg_id NUL", "POST", MSG, {"content": "x", "client_msg_id": "\x00"}, status=422),
    Case("msg sender_id field", "POST", MSG, {"content": "x", "sender_id": "bob"}, status=422),
    Case("msg seq field", "POST", MSG, {"content": "x", "seq": 1}, status=422),
    Case("msg body list", "POST", MSG, ["x"], status=422),
    Case("msg body NaN", "POST", MSG, content=b'{"msg_type": NaN, "content": "x"}', headers=JSON),
    Case("msg body Infinity", "POST", MSG, content=b'{"msg_type": Infinity}', headers=JSON),
    Case("msg empty body", "POST", MSG, content=b"", headers=JSON, status=422),
    # POST /groups/{gid}/read
    Case("seq string", "POST", READ, {"seq": "1"}, status=422),
    Case("seq true", "POST", READ, {"seq": True}, status=422),
    Case("seq float", "POST", READ, {"seq": 1.5}, status=422),
    Case("seq negative", "POST", READ, {"seq": -1}, status=422),
    Case("seq null", "POST", READ, {"seq": None}, status=422),
    Case("seq missing", "POST", READ, {}, status=422),
    Case("seq list", "POST", READ, {"seq": [1]}, status=422),
    Case("seq NaN", "POST", READ, content=b'{"seq": NaN}', headers=JSON, status=422),
    Case("seq 5000 digits", "POST", READ, content=b'{"seq": ' + b"9" * 5000 + b"}", headers=JSON),
    Case("read unknown field", "POST", READ, {"seq": 1, "message_id": "m"}, status=422),
    # POST /groups/{gid}/members
    Case("member user_id int", "POST", MEMBERS, {"user_id": 5}, status=422),
    Case("member user_id empty", "POST", MEMBERS, {"user_id": ""}, status=422),
    Case("member user_id 65", "POST", MEMBERS, {"user_id": "u" * 65}, status=422),
    Case("member user_id NUL", "POST", MEMBERS, {"user_id": "a\x00"}, status=422),
    Case("member user_id list", "POST", MEMBERS, {"user_id": ["a"]}, status=422),
    Case("member missing", "POST", MEMBERS, {}, status=422),
    Case("member role field", "POST", MEMBERS, {"user_id": "z", "role": "owner"}, status=422),
    # paths
    Case("group id 65", "GET", "/groups/" + "g" * 65 + "/messages", status=422),
    Case("group id 1000", "POST", "/groups/" + "g" * 1000 + "/read", {"seq": 1}, status=422),
    Case("group id NUL", "GET", "/groups/a%00b/messages", status=422),
    Case("group id newline", "GET", "/groups/a%0Ab/messages", status=422),
    Case("group id unknown", "GET", "/groups/nope/messages", status=404),
    Case("group id emoji", "GET", "/groups/%F0%9F%98%80/online", status=404),
    Case("group id empty", "GET", "/groups//messages", status=404),
    Case("member path 65", "DELETE", "/groups/{gid}/members/" + "u" * 65, status=422),
    Case("member path NUL", "DELETE", "/groups/{gid}/members/u%00", status=422),
    Case("notification id 65", "POST", "/notifications/" + "n" * 65 + "/read", status=422),
    Case("notification id NUL", "POST", "/notifications/n%00/read", status=422),
    Case("notification id unknown", "POST", "/notifications/nope/read", status=404),
    # query parameters
    Case("limit zero", "GET", "/groups?limit=0", status=422),
    Case("limit negative", "GET", "/messages/offline?limit=-5", status=422),
    Case("limit 201", "GET", "/notifications?limit=201", status=422),
    Case("limit text", "GET", MSG + "?limit=abc", status=422),
    Case("limit float", "GET", MSG + "?limit=1.5", status=422),
    Case("limit huge", "GET", MSG + "?limit=" + "9" * 40, status=422),
    Case("after_seq negative", "GET", MSG + "?after_seq=-1", status=422),
    Case("before_seq negative", "GET", MSG + "?before_seq=-3", status=422),
    Case("after_seq text", "GET", MSG + "?after_seq=one", status=422),
    Case("after_seq 2**63", "GET", MSG + f"?after_seq={2**63}", status=422),
    Case("unread_only text", "GET", "/notifications?unread_only=maybe", status=422),
    Case("cursor 513", "GET", "/groups?cursor=" + "c" * 513, status=422),
    Case("cursor NUL", "GET", "/groups?cursor=a%00", status=422),
    Case("offline cursor bad", "GET", "/messages/offline?cursor=%%%", status=422),
    Case("notifications cursor bad", "GET", "/notifications?cursor=Zm9v", status=422),
    # notifications push
    Case(
        "push user_ids empty",
        "POST",
        "/notifications",
        {"user_ids": [], "type": "t", "title": "x"},
        service=True,
        status=422,
    ),
    Case(
        "push user_ids string",
        "POST",
        "/notifications",
        {"user_ids": "bob", "type": "t", "title": "x"},
        service=True,
        status=422,
    ),
    Case(
        "push user_ids ints",
        "POST",
        "/notifications",
        {"user_ids": [1], "type": "t", "title": "x"},
        service=True,
        status=422,
    ),
    Case(
        "push type missing",
        "POST",
        "/notifications",
        {"user_ids": ["b"], "title": "x"},
        service=True,
        status=422,
    ),
    Case(
        "push title empty",
        "POST",
        "/notifications",
        {"user_ids": ["b"], "type": "t", "title": ""},
        service=True,
        status=422,
    ),
    Case(
        "push title 201",
        "POST",
        "/notifications",
        {"user_ids": ["b"], "type": "t", "title": "x" * 201},
        service=True,
        status=422,
    ),
    Case(
        "push content 1MB",
        "POST",
        "/notifications",
        {"user_ids": ["b"], "type": "t", "title": "x", "content": MB},
        service=True,
        status=422,
    ),
    Case(
        "push type NUL",
        "POST",
        "/notifications",
        {"user_ids": ["b"], "type": "t\x00", "title": "x"},
        service=True,
        status=422,
    ),
    Case(
        "push unknown field",
        "POST",
        "/notifications",
        {"user_ids": ["b"], "type": "t", "title": "x", "read_at": 1},
        service=True,
        status=422,
    ),
    # methods and routes
    Case("method not allowed", "PUT", "/groups", {"name": "g"}, status=405),
    Case("unknown route", "GET", "/nothing-here", status=404),
]


def test_battery_is_big_enough() -> None:
    assert len(CASES) >= 40
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input_gets_a_json_4xx(api: TestClient, ids: dict[str, str], case: Case) -> None:
    path = f"{V1}{case.path}".replace("{gid}", ids["gid"]).replace("{nid}", ids["nid"])
    headers = bearer(SERVICE, role="service") if case.service else bearer(OWNER)
    headers.update(case.headers)
    kwargs: dict[str, Any] = {"headers": headers}
    if case.content is not None:
        kwargs["content"] = case.content
    elif case.json is not None:
        kwargs["json"] = case.json
    response = api.request(case.method, path, **kwargs)
    assert 400 <= response.status_code < 500, f"{response.status_code}: {response.text[:300]}"
    if case.status is not None:
        assert response.status_code == case.status, response.text[:300]
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"detail"}
    assert isinstance(body["detail"], str | list) and body["detail"]
    assert len(response.content) < 20_000, "the error echoes the input back"


def test_bad_input_changed_nothing(api: TestClient, ids: dict[str, str]) -> None:
    history = api.get(f"{V1}/groups/{ids['gid']}/messages", headers=bearer(OWNER)).json()
    assert history["items"] == []
    names = [g["name"] for g in api.get(f"{V1}/groups", headers=bearer(OWNER)).json()["items"]]
    assert names == ["target"]
    mark = api.post(f"{V1}/groups/{ids['gid']}/read", json={"seq": 0}, headers=bearer(OWNER))
    assert mark.json()["last_read_seq"] == 0
    assert api.get(f"{V1}/groups", headers=bearer("b")).json()["items"] == []


@pytest.mark.parametrize(
    ("group", "content", "image_url"),
    [("{gid}", "a\x00b", ""), ("{gid}", "x", "https://x/\x00"), ("g\x00", "x", "")],
)
def test_send_pipeline_refuses_nul_without_a_schema(
    api: TestClient, ids: dict[str, str], group: str, content: str, image_url: str
) -> None:
    """The WebSocket path reaches the send pipeline without REST's schema: it checks too."""
    from app.errors import BadRequest
    from app.services import chat
    from app.services.chat import Sender

    async def attempt() -> None:
        await chat.send_message(
            api.app_state["ctx"],
            sender=Sender(OWNER, "Owner"),
            group_id=group.replace("{gid}", ids["gid"]),
            msg_type=2 if image_url else 1,
            content=content,
            image_url=image_url,
        )

    assert api.portal is not None
    with pytest.raises(BadRequest):
        api.portal.call(attempt)
