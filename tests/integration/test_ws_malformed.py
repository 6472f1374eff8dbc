"""A battery of malformed frames against a real server: each gets its error and the
connection goes on serving (SPEC §3.5 "bad input never crashes the connection loop", §11)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest

from tests.support import services
from tests.support.server import ServerProcess
from tests.support.tokens import SECRET, bearer, token
from tests.support.wsclient import WsClient

ENV = {
    "WS_CONNECT_RATE_PER_IP": "100000",
    "RATE_LIMIT_MESSAGES_PER_SECOND": "1000",
    "RATE_LIMIT_BURST": "1000",
    "WS_AUTH_TIMEOUT": "60",
}
GROUP = "%GROUP%"
MID = "%MID%"
LONG_ID = "g" * 65


@dataclass(frozen=True)
class Case:
    """One malformed frame; `authed`/`unauthed` are the expected error codes."""

    name: str
    text: str
    authed: int = 400
    unauthed: int = 400


def envelope(name: str, text: str) -> Case:
    return Case(name, text)


def payload(name: str, type: str, data: Any) -> Case:
    """A well-formed envelope whose data is wrong: 400, but 401 before auth (SPEC §11)."""
    text = orjson.dumps({"type": type, "message_id": MID, "data": data}).decode()
    return Case(name, text, authed=400, unauthed=401)


def resume(name: str, value: Any) -> Case:
    """An auth frame with a valid token and a `resume` of the wrong shape: 400 either way."""
    return Case(name, orjson.dumps({"type": "auth", "message_id": MID, "data": value}).decode())


def send(**data: Any) -> dict[str, Any]:
    return {"group_id": GROUP, "content": "hello", **data}


CASES: list[Case] = [
    # Not one JSON object.
    envelope("invalid JSON", "not json"),
    envelope("truncated object", '{"type": "ping"'),
    envelope("empty array", "[]"),
    envelope("array of a frame", '[{"type": "ping"}]'),
    envelope("number", "42"),
    envelope("string", '"ping"'),
    envelope("null", "null"),
    envelope("boolean", "true"),
    envelope("two objects", '{"type": "ping"}{"type": "ping"}'),
    envelope("newline-joined objects", '{"type": "ping"}\n{"type": "ping"}'),
    envelope("byte order mark", '\ufeff{"type": "ping"}'),
    envelope("lone surrogate escape", '{"type": "\\ud800"}'),
    envelope("NaN", '{"type": "ping", "timestamp": NaN}'),
    # Envelope fields.
    envelope("empty object", "{}"),
    envelope("missing type", '{"message_id": "%MID%"}'),
    envelope("null type", '{"type": null, "message_id": "%MID%"}'),
    envelope("numeric type", '{"type": 7, "message_id": "%MID%"}'),
    envelope("unknown type", '{"type": "fly", "message_id": "%MID%"}'),
    envelope("server-only type", '{"type": "new_message", "message_id": "%MID%"}'),
    envelope("type in capitals", '{"type": "PING", "message_id": "%MID%"}'),
    envelope("fullwidth type", '{"type": "ｐｉｎｇ", "message_id": "%MID%"}'),
    envelope("emoji type", '{"type": "💥", "message_id": "%MID%"}'),
    envelope("type with NUL", '{"type": "ping\\u0000", "message_id": "%MID%"}'),
    envelope("numeric message_id", '{"type": "ping", "message_id": 17}'),
    envelope("boolean message_id", '{"type": "ping", "message_id": true}'),
    envelope("empty message_id", '{"type": "ping", "message_id": ""}'),
    envelope("overlong message_id", '{"type": "ping", "message_id": "' + "x" * 65 + '"}'),
    envelope("array message_id", '{"type": "ping", "message_id": ["a"]}'),
    envelope("message_id with NUL", '{"type": "ping", "message_id": "a\\u0000b"}'),
    envelope("true timestamp", '{"type": "ping", "message_id": "%MID%", "timestamp": true}'),
    envelope("string timestamp", '{"type": "ping", "message_id": "%MID%", "timestamp": "17"}'),
    envelope("float timestamp", '{"type": "ping", "message_id": "%MID%", "timestamp": 1.5}'),
    envelope(
        "timestamp beyond 64 bits",
        '{"type": "ping", "message_id": "%MID%", "timestamp": 123456789012345678901234567890}',
    ),
    envelope("data as string", '{"type": "ping", "message_id": "%MID%", "data": "{}"}'),
    envelope("data as array", '{"type": "ping", "message_id": "%MID%", "data": [1]}'),
    envelope("data as number", '{"type": "ping", "message_id": "%MID%", "data": 5}'),
    envelope(
        "send_message data as JSON string",
        '{"type": "send_message", "message_id": "%MID%", "data": "{\\"group_id\\": \\"x\\"}"}',
    ),
    # auth with a resume of the wrong shape (the token itself is valid).
    resume("resume as array", {"token": "%TOKEN%", "resume": [1]}),
    resume("resume as string", {"token": "%TOKEN%", "resume": "g:1"}),
    resume("resume negative seq", {"token": "%TOKEN%", "resume": {GROUP: -1}}),
    resume("resume string seq", {"token": "%TOKEN%", "resume": {GROUP: "3"}}),
    resume("resume boolean seq", {"token": "%TOKEN%", "resume": {GROUP: True}}),
    resume("resume float seq", {"token": "%TOKEN%", "resume": {GROUP: 1.5}}),
    resume("resume overlong group id", {"token": "%TOKEN%", "resume": {LONG_ID: 1}}),
    # send_message.
    payload("send_message without data", "send_message", {}),
    payload("send_message numeric group_id", "send_message", send(group_id=5)),
    payload("send_message overlong group_id", "send_message", send(group_id=LONG_ID)),
    payload("send_message group_id with NUL", "send_message", send(group_id="g\x00")),
    payload("send_message msg_type 3", "send_message", send(msg_type=3)),
    payload("send_message msg_type as string", "send_message", send(msg_type="1")),
    payload("send_message msg_type true", "send_message", send(msg_type=True)),
    payload("send_message msg_type null", "send_message", send(msg_type=None)),
    payload("send_message numeric content", "send_message", send(content=123)),
    payload("send_message array content", "send_message", send(content=["a"])),
    payload("send_message empty text", "send_message", send(content="")),
    payload("send_message blank text", "send_message", send(content=" \n\t ")),
    payload("send_message content with NUL", "send_message", send(content="a\x00b")),
    payload("send_message image without url", "send_message", send(msg_type=2, content="")),
    payload(
        "send_message ftp image_url", "send_message", send(msg_type=2, image_url="ftp://x/y.png")
    ),
    payload(
        "send_message javascript image_url",
        "send_message",
        send(msg_type=2, image_url="javascript:alert(1)"),
    ),
    payload("send_message numeric image_url", "send_message", send(msg_type=2, image_url=7)),
    # join_group / leave_group.
    payload("join_group without group_id", "join_group", {}),
    payload("join_group array group_id", "join_group", {"group_id": []}),
    payload("join_group empty group_id", "join_group", {"group_id": ""}),
    payload("join_group group_id with BEL", "join_group", {"group_id": "\x07bell"}),
    payload("join_group group_id with NUL", "join_group", {"group_id": "a\x00b"}),
    payload("leave_group without group_id", "leave_group", {}),
    payload("leave_group null group_id", "leave_group", {"group_id": None}),
    payload("leave_group overlong group_id", "leave_group", {"group_id": LONG_ID}),
    # mark_read.
    payload("mark_read without seq or message_id", "mark_read", {"group_id": GROUP}),
    payload("mark_read without group_id", "mark_read", {"seq": 1}),
    payload("mark_read negative seq", "mark_read", {"group_id": GROUP, "seq": -1}),
    payload("mark_read string seq", "mark_read", {"group_id": GROUP, "seq": "5"}),
    payload("mark_read boolean seq", "mark_read", {"group_id": GROUP, "seq": True}),
    payload("mark_read float seq", "mark_read", {"group_id": GROUP, "seq": 1.5}),
    payload("mark_read huge seq", "mark_read", {"group_id": GROUP, "seq": 2**63}),
    payload("mark_read numeric message_id", "mark_read", {"group_id": GROUP, "message_id": 5}),
    payload("mark_read empty message_id", "mark_read", {"group_id": GROUP, "message_id": ""}),
    payload(
        "mark_read message_id with NUL", "mark_read", {"group_id": GROUP, "message_id": "m\x00"}
    ),
    # sync.
    payload("sync without group_id", "sync", {}),
    payload("sync object group_id", "sync", {"group_id": {"a": 1}}),
    payload("sync group_id with NUL", "sync", {"group_id": "\x00", "after_seq": 0}),
    payload("sync negative after_seq", "sync", {"group_id": GROUP, "after_seq": -1}),
    payload("sync string after_seq", "sync", {"group_id": GROUP, "after_seq": "0"}),
    payload("sync float after_seq", "sync", {"group_id": GROUP, "after_seq": 1000.0}),
    payload("sync huge after_seq", "sync", {"group_id": GROUP, "after_seq": 2**64 - 1}),
    payload("sync zero limit", "sync", {"group_id": GROUP, "after_seq": 0, "limit": 0}),
    payload("sync huge limit", "sync", {"group_id": GROUP, "after_seq": 0, "limit": 10**9}),
    payload("sync boolean limit", "sync", {"group_id": GROUP, "after_seq": 0, "limit": True}),
    payload("sync negative limit", "sync", {"group_id": GROUP, "after_seq": 0, "limit": -5}),
]


@pytest.fixture(scope="module")
def servers(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, ServerProcess]]:
    """An embedded server and, when Postgres answers and is selected, one on Postgres: both
    spawned at once."""
    root = tmp_path_factory.mktemp("malformed")
    selected = [
        item for item in request.session.items if getattr(item, "module", None) is request.module
    ]
    started: dict[str, ServerProcess] = {}
    databases: services.PgDatabases | None = None
    pg_url = None
    started["embedded"] = ServerProcess(
        {**ENV, "JWT_SECRET": SECRET, "SQLITE_PATH": str(root / "server.db")}, root
    ).spawn()
    if any("[postgres]" in item.name for item in selected) and services.pg_check() is None:
        databases = request.getfixturevalue("pg_databases")
        pg_url = databases.new()
        pg_dir = root / "pg"
        pg_dir.mkdir()
        env = {**ENV, "JWT_SECRET": SECRET, "DATABASE_URL": pg_url}
        started["postgres"] = ServerProcess(env, pg_dir).spawn()
    try:
        for server in started.values():
            server.wait_ready(timeout=60)
        yield started
    finally:
        for server in started.values():
            server.stop()
        if databases is not None and pg_url is not None:
            databases.drop(pg_url)


@pytest.fixture(params=["embedded", pytest.param("postgres", marks=pytest.mark.postgres)])
def server(request: pytest.FixtureRequest, servers: dict[str, ServerProcess]) -> ServerProcess:
    if request.param not in servers:
        request.getfixturevalue("pg_databases")  # skips (or fails under CI) with the reason
        pytest.fail("the Postgres server was not started")
    return servers[request.param]


@dataclass
class Setup:
    user: str
    group: str
    client: WsClient


@pytest.fixture
async def setup(server: ServerProcess) -> Any:
    user = f"mal-{uuid.uuid4().hex[:8]}"
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
        created = await http.post(
            "/api/v1/groups", json={"name": "battery", "member_ids": []}, headers=bearer(user)
        )
    assert created.status_code == 201, created.text
    client = await WsClient.open(server.ws_url)
    try:
        yield Setup(user, created.json()["group_id"], client)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.close(), 5)


async def next_frame(client: WsClient) -> dict[str, Any]:
    async with asyncio.timeout(10):
        return orjson.loads(await client.ws.recv())  # type: ignore[no-any-return]


async def run_battery(s: Setup, *, authed: bool) -> list[str]:
    """Send every case, each followed by a ping; the problems found (empty when all is well)."""
    problems: list[str] = []
    for i, case in enumerate(CASES):
        message_id = f"bad-{i}"
        text = case.text.replace(MID, message_id).replace(GROUP, s.group)
        text = text.replace("%TOKEN%", token(s.user))
        expected = case.authed if authed else case.unauthed
        await s.client.ws.send(text)
        reply = await next_frame(s.client)
        if reply.get("type") != "error" or reply["data"].get("code") != expected:
            problems.append(f"{case.name}: expected error {expected}, got {reply}")
        elif not reply["data"].get("message"):
            problems.append(f"{case.name}: error without a human-readable message")
        elif MID in case.text and reply.get("message_id") != message_id:
            problems.append(f"{case.name}: error not correlated to {message_id}: {reply}")
        await s.client.ws.send(f'{{"type": "ping", "message_id": "after-{i}"}}')
        pong = await next_frame(s.client)
        if pong.get("type") != "pong" or pong.get("message_id") != f"after-{i}":
            problems.append(f"{case.name}: the ping after it got {pong}")
    return problems


def test_the_battery_is_large_and_distinct() -> None:
    assert len(CASES) >= 30
    assert len({case.name for case in CASES}) == len(CASES)
    assert len({case.text for case in CASES}) == len(CASES)


async def test_malformed_frames_after_auth_get_400_and_the_connection_goes_on(
    server: ServerProcess, setup: Setup
) -> None:
    s = setup
    assert (await s.client.auth(token(s.user)))["type"] == "auth_success"
    first = await s.client.request("send_message", {"group_id": s.group, "content": "kept"})
    assert first["type"] == "ack"
    await s.client.expect(lambda f: f["type"] == "new_message")

    problems = await run_battery(s, authed=True)
    assert problems == []

    # Nothing was stored, no seq was used, and the stored message is intact.
    after = await s.client.request("send_message", {"group_id": s.group, "content": "next"})
    assert after["type"] == "ack" and after["data"]["seq"] == first["data"]["seq"] + 1
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
        history = await http.get(f"/api/v1/groups/{s.group}/messages", headers=bearer(s.user))
    assert [m["content"] for m in history.json()["items"]] == ["kept", "next"]


async def test_malformed_frames_before_auth_get_400_or_401_and_auth_still_works(
    setup: Setup,
) -> None:
    s = setup
    problems = await run_battery(s, authed=False)
    assert problems == []

    ok = await s.client.auth(token(s.user))
    assert ok["type"] == "auth_success" and ok["data"]["groups"] == [s.group]


@pytest.mark.parametrize(
    "bad_token",
    [None, 123, True, [], {}, "", "a.b.c", "x" * 9000, token("mallory", ttl=-5) + "\u0000"],
)
async def test_auth_with_a_malformed_token_fails_with_401(setup: Setup, bad_token: Any) -> None:
    s = setup
    data = {} if bad_token is None else {"token": bad_token}
    failed = await s.client.request("auth", data)
    assert failed["type"] == "auth_failed"
    assert failed["data"]["code"] == 401 and failed["data"]["message"]
    assert (await s.client.request("ping"))["type"] == "pong"
    assert (await s.client.auth(token(s.user)))["type"] == "auth_success"
