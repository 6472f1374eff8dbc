"""The /ws protocol end to end (SPEC §3, §7, §8, §9, §11) against real uvicorn processes.

Servers are started once per module (several at once) and shared; every test works with its
own users and groups. The key flows run on embedded SQLite and on Postgres.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import httpx
import orjson
import pytest
from fastapi.testclient import TestClient
from jose import jwt
from starlette.testclient import WebSocketDenialResponse
from websockets.asyncio.client import connect
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed, InvalidStatus

from app.config import Settings
from app.logging import UVICORN_INCOMPLETE_HANDSHAKE
from app.main import Lifecycle, create_app
from app.realtime.presence import MemoryPresence
from tests.support import services
from tests.support.server import ServerProcess
from tests.support.shapes import MESSAGE_FIELDS
from tests.support.tokens import SECRET, bearer, token
from tests.support.wsclient import WsClient

RESUME_LIMIT = 40
SLOW_CONTENT_CHARS = 20_000
HIGH_RATES = {
    "WS_CONNECT_RATE_PER_IP": "100000",
    "RATE_LIMIT_MESSAGES_PER_SECOND": "1000",
    "RATE_LIMIT_BURST": "1000",
}
MAIN_ENV = {
    **HIGH_RATES,
    "WS_MAX_MESSAGE_BYTES": "65536",
    "WS_ALLOWED_ORIGINS": "http://allowed.example",
    "WS_RESUME_LIMIT": str(RESUME_LIMIT),
}
# One server per fixture name; the pool spawns those the selected tests use, all at once.
SERVER_ENVS: dict[str, dict[str, str]] = {
    "main_server": MAIN_ENV,
    # Rate limit, auth timeout and slow consumer: none of their tests disturbs the others.
    "strict_server": {
        "RATE_LIMIT_MESSAGES_PER_SECOND": "1",
        "RATE_LIMIT_BURST": "3",
        "WS_AUTH_TIMEOUT": "2",
        "WS_SEND_QUEUE": "8",
        "MAX_CONTENT_CHARS": str(SLOW_CONTENT_CHARS),
    },
    "capacity_server": {"WS_MAX_CONNECTIONS": "2"},
    # Peers 127.0.0.1 (the trusted proxy) and 127.0.0.2 (not trusted) are counted apart.
    "proxy_server": {"WS_CONNECT_RATE_PER_IP": "3", "TRUSTED_PROXIES": "127.0.0.1"},
    "shutdown_server": {},
}


class ServerPool:
    """Servers spawned together (their start-up overlaps) and stopped at module end."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.servers: dict[str, ServerProcess] = {}
        self.ready: set[str] = set()
        self.pg_url: str | None = None

    def spawn(self, name: str, env: dict[str, str]) -> None:
        if name in self.servers:
            return
        directory = self.root / name
        directory.mkdir()
        base = {"JWT_SECRET": SECRET, "SQLITE_PATH": str(directory / "server.db")}
        self.servers[name] = ServerProcess({**base, **env}, directory).spawn()

    def get(self, name: str, env: dict[str, str] | None = None) -> ServerProcess:
        self.spawn(name, SERVER_ENVS[name] if env is None else env)
        server = self.servers[name]
        if name not in self.ready:
            server.wait_ready(timeout=60)
            self.ready.add(name)
        return server

    def stop_all(self) -> None:
        for server in self.servers.values():  # signal all first: they shut down together
            if server.proc is not None and server.proc.poll() is None:
                server.proc.send_signal(signal.SIGTERM)
        for server in self.servers.values():
            if server.proc is None:
                continue
            try:
                server.proc.wait(15)
            except subprocess.TimeoutExpired:
                server.kill()


@pytest.fixture(scope="module")
def pool(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerPool]:
    pool = ServerPool(tmp_path_factory.mktemp("ws-servers"))
    selected = [
        item for item in request.session.items if getattr(item, "module", None) is request.module
    ]
    wanted = {
        name
        for item in selected
        for name in getattr(item, "fixturenames", ())
        if name in SERVER_ENVS
    }
    if any("[embedded]" in item.name for item in selected):
        wanted.add("main_server")
    for name in sorted(wanted):
        pool.spawn(name, SERVER_ENVS[name])
    databases: services.PgDatabases | None = None
    if any("[postgres]" in item.name for item in selected) and services.pg_check() is None:
        databases = request.getfixturevalue("pg_databases")
        pool.pg_url = databases.new()
        pool.spawn("postgres_server", {**MAIN_ENV, "DATABASE_URL": pool.pg_url})
    yield pool
    pool.stop_all()
    if databases is not None and pool.pg_url is not None:
        databases.drop(pool.pg_url)


def _server_fixture(name: str) -> Any:
    @pytest.fixture(scope="module", name=name)
    def fixture(pool: ServerPool) -> ServerProcess:
        return pool.get(name)

    return fixture


main_server = _server_fixture("main_server")
strict_server = _server_fixture("strict_server")
capacity_server = _server_fixture("capacity_server")
proxy_server = _server_fixture("proxy_server")
shutdown_server = _server_fixture("shutdown_server")


@pytest.fixture(
    scope="module", params=["embedded", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def server(request: pytest.FixtureRequest, pool: ServerPool) -> ServerProcess:
    """The service with the main settings, on embedded SQLite and on Postgres."""
    if request.param == "embedded":
        return pool.get("main_server")
    databases: services.PgDatabases = request.getfixturevalue("pg_databases")  # or skip
    if pool.pg_url is None:
        pool.pg_url = databases.new()
    return pool.get("postgres_server", {**MAIN_ENV, "DATABASE_URL": pool.pg_url})


# -- helpers -----------------------------------------------------------------------------------


class Opener(Protocol):
    def __call__(
        self,
        server: ServerProcess,
        user: str | None = None,
        *,
        resume: dict[str, int] | None = None,
        **kwargs: Any,
    ) -> Awaitable[WsClient]: ...


@pytest.fixture
async def ws() -> AsyncIterator[Opener]:
    """Open (and, given a user, authenticate) clients; all are closed at teardown."""
    opened: list[WsClient] = []

    async def open_client(
        server: ServerProcess,
        user: str | None = None,
        *,
        resume: dict[str, int] | None = None,
        **kwargs: Any,
    ) -> WsClient:
        client = await WsClient.open(server.ws_url, **kwargs)
        opened.append(client)
        if user is not None:
            reply = await client.auth(token(user), resume)
            assert reply["type"] == "auth_success", reply
        return client

    yield open_client
    for client in opened:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.close(), 5)


def uid(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def users(*names: str) -> list[str]:
    return [uid(name) for name in names]


async def api(
    server: ServerProcess, method: str, path: str, user: str, **kwargs: Any
) -> httpx.Response:
    headers = bearer(user, role="service") if user == "service" else bearer(user)
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
        return await http.request(method, f"/api/v1{path}", headers=headers, **kwargs)


async def make_group(server: ServerProcess, owner: str, *members: str) -> str:
    response = await api(
        server, "POST", "/groups", owner, json={"name": "test group", "member_ids": list(members)}
    )
    assert response.status_code == 201, response.text
    return str(response.json()["group_id"])


async def send_many(
    client: WsClient, group_id: str, count: int, tag: str = "m"
) -> list[dict[str, Any]]:
    """Send `count` messages without waiting between them; their ack data, in order."""
    ids = [
        await client.send("send_message", {"group_id": group_id, "content": f"{tag}-{i}"})
        for i in range(count)
    ]
    acks = []
    for message_id in ids:
        reply = await client.reply(message_id)
        assert reply["type"] == "ack", reply
        acks.append(reply["data"])
    return acks


async def stray(client: WsClient, type: str = "new_message") -> list[dict[str, Any]]:
    """Frames of `type` that arrived before the answer to a ping sent now (and stay unread)."""
    pong = await client.request("ping")
    assert pong["type"] == "pong"
    found = [frame for frame in client.backlog if frame["type"] == type]
    client.backlog = [frame for frame in client.backlog if frame["type"] != type]
    return found


async def error_code(client: WsClient, type: str, data: dict[str, Any] | None) -> int:
    reply = await client.request(type, data)
    assert reply["type"] == "error", reply
    assert isinstance(reply["data"]["message"], str) and reply["data"]["message"]
    return int(reply["data"]["code"])


async def refused(server: ServerProcess, reason: str) -> float:
    """websocket_handshakes_refused_total{reason} as the server's /metrics says now."""
    async with httpx.AsyncClient(base_url=server.base_url) as http:
        text = (await http.get("/metrics")).text
    line = rf'^websocket_handshakes_refused_total\{{reason="{reason}",service="[^"]*"\}} (\S+)$'
    found = re.search(line, text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


async def assert_refusals_logged_at_info(server: ServerProcess) -> None:
    """The refusals are in the server's log as uvicorn's INFO lines, and uvicorn's ERROR
    about an unfinished handshake (which it logs after every refusal) is not."""
    async with httpx.AsyncClient(base_url=server.base_url) as http:
        # Answered after the refused handshakes' tasks logged whatever they log: each logs
        # right after its last write, with nothing awaited in between.
        assert (await http.get("/health")).status_code == 200
    text = server.log_path.read_text(errors="replace")
    assert "connection rejected (" in text
    assert UVICORN_INCOMPLETE_HANDSHAKE not in text


async def handshake_status(url: str, **kwargs: Any) -> int:
    """101 when the upgrade is accepted (the socket is closed again), else the HTTP status."""
    return (await handshake(url, **kwargs))[0]


async def handshake(url: str, **kwargs: Any) -> tuple[int, Headers]:
    """The handshake's status and, for a refusal, the response headers."""
    try:
        async with connect(url, open_timeout=10, **kwargs):
            return 101, Headers()
    except InvalidStatus as refused:
        return refused.response.status_code, refused.response.headers


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    """Poll a condition that no event announces (state the server updates after a close)."""
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.02)


def max_socket_send_buffer() -> int:
    """The most a TCP socket may buffer for sending here (Linux autotuning's ceiling)."""
    try:
        return int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    except (OSError, IndexError, ValueError):
        return 4 << 20


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in a Prometheus exposition (0 when absent)."""
    for line in text.splitlines():
        match = re.match(rf"^{re.escape(name)}(?:\{{(.*)\}})? (\S+)$", line)
        if not match:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(match.group(2))
    return 0.0


async def metrics_text(server: ServerProcess) -> str:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
        response = await http.get("/metrics")
    assert response.status_code == 200
    return response.text


# -- §3.2 client → server ----------------------------------------------------------------------


async def test_ping_pong_echoes_timestamp_and_message_id(
    main_server: ServerProcess, ws: Opener
) -> None:
    client = await ws(main_server)
    for authed in (False, True):
        await client.ws.send('{"type":"ping","message_id":"hb-1","timestamp":1764200000123}')
        pong = await client.reply("hb-1")
        assert pong["type"] == "pong"
        assert pong["timestamp"] == 1764200000123
        assert isinstance(pong["data"], dict)
        if not authed:
            assert (await client.auth(token(uid("ann"))))["type"] == "auth_success"
    # The seed's heartbeat carries neither message_id nor timestamp.
    await client.ws.send('{"type":"ping"}')
    bare = await client.expect(lambda f: f["type"] == "pong")
    assert "message_id" not in bare and isinstance(bare["timestamp"], int)


async def test_auth_success_and_failure(main_server: ServerProcess, ws: Opener) -> None:
    alice, bob = users("alice", "bob")
    group = await make_group(main_server, bob, alice)
    client = await ws(main_server)

    failed = await client.request("auth", {"token": token(alice) + "x"})
    assert failed["type"] == "auth_failed"
    assert failed["data"]["code"] == 401 and failed["data"]["message"]

    jwt_token = token(alice, ttl=600)
    ok = await client.request("auth", {"token": jwt_token}, message_id="auth-7")
    assert ok["type"] == "auth_success" and ok["message_id"] == "auth-7"
    assert ok["data"]["user_id"] == alice
    assert ok["data"]["groups"] == [group]
    assert ok["data"]["expires_at"] == jwt.get_unverified_claims(jwt_token)["exp"] * 1000


async def test_send_message_ack_and_new_message_shape(server: ServerProcess, ws: Opener) -> None:
    alice, bob = users("alice", "bob")
    group = await make_group(server, alice, bob)
    sender, receiver = await ws(server, alice), await ws(server, bob)

    ack = await sender.request(
        "send_message", {"group_id": group, "msg_type": 1, "content": "héllo ✓"}, message_id="c-1"
    )
    assert ack["type"] == "ack" and ack["message_id"] == "c-1"
    data = ack["data"]
    assert set(data) == {"message_id", "group_id", "seq", "created_at", "success"}
    assert data["group_id"] == group and data["seq"] == 1 and data["success"] is True
    uuid.UUID(data["message_id"])
    assert isinstance(data["created_at"], int)
    assert abs(data["created_at"] - time.time() * 1000) < 60_000

    image = await sender.request(
        "send_message",
        {"group_id": group, "msg_type": 2, "image_url": "https://cdn.example/cat.png"},
    )
    assert image["type"] == "ack" and image["data"]["seq"] == 2

    for client in (receiver, sender):
        first = await client.expect(lambda f: f["type"] == "new_message")
        assert set(first["data"]) == MESSAGE_FIELDS
        assert first["data"] == {
            "message_id": data["message_id"],
            "group_id": group,
            "seq": 1,
            "sender_id": alice,
            "sender_name": alice.title(),
            "msg_type": 1,
            "content": "héllo ✓",
            "image_url": "",
            "created_at": data["created_at"],
        }
        assert first["message_id"] == data["message_id"]
        assert first["timestamp"] == data["created_at"]
        second = await client.expect(lambda f: f["type"] == "new_message")
        assert second["data"]["msg_type"] == 2
        assert second["data"]["image_url"] == "https://cdn.example/cat.png"
        assert second["data"]["content"] == ""


async def test_join_group_is_403_for_missing_and_foreign_groups_alike(
    main_server: ServerProcess, ws: Opener
) -> None:
    alice, bob = users("alice", "bob")
    own = await make_group(main_server, alice)
    foreign = await make_group(main_server, bob)
    client = await ws(main_server, alice)

    missing = await client.request("join_group", {"group_id": str(uuid.uuid4())})
    other = await client.request("join_group", {"group_id": foreign})
    assert missing["type"] == other["type"] == "error"
    assert missing["data"] == other["data"]
    assert missing["data"]["code"] == 403

    joined = await client.request("join_group", {"group_id": own})
    assert joined["type"] == "ack"
    assert joined["data"]["group_id"] == own and joined["data"]["success"] is True


async def test_leave_group_stops_delivery_on_that_connection_only(
    server: ServerProcess, ws: Opener
) -> None:
    alice, bob = users("alice", "bob")
    group = await make_group(server, alice, bob)
    phone, laptop = await ws(server, bob), await ws(server, bob)
    sender = await ws(server, alice)

    left = await phone.request("leave_group", {"group_id": group})
    assert left["type"] == "ack"
    assert left["data"] == {"group_id": group, "success": True}
    await send_many(sender, group, 2)

    assert [m["seq"] for m in await laptop.messages(2)] == [1, 2]
    assert await stray(phone) == []
    # Joining again resumes live delivery on that connection.
    assert (await phone.request("join_group", {"group_id": group}))["type"] == "ack"
    await send_many(sender, group, 1)
    assert [m["seq"] for m in await phone.messages(1)] == [3]


async def test_mark_read_by_seq_and_message_id_never_backwards_and_clamped(
    server: ServerProcess, ws: Opener
) -> None:
    alice, bob = users("alice", "bob")
    group = await make_group(server, alice, bob)
    sender = await ws(server, alice)
    acks = await send_many(sender, group, 5)
    phone, laptop = await ws(server, bob), await ws(server, bob)

    async def mark(data: dict[str, Any]) -> int:
        reply = await phone.request("mark_read", {"group_id": group, **data})
        assert reply["type"] == "ack", reply
        assert set(reply["data"]) == {"group_id", "last_read_seq"}
        assert reply["data"]["group_id"] == group
        return int(reply["data"]["last_read_seq"])

    assert await mark({"seq": 2}) == 2
    update = await laptop.expect(lambda f: f["type"] == "read_update")
    assert update["data"] == {"group_id": group, "last_read_seq": 2}
    assert await mark({"message_id": acks[3]["message_id"]}) == 4
    update = await laptop.expect(lambda f: f["type"] == "read_update")
    assert update["data"] == {"group_id": group, "last_read_seq": 4}
    assert await mark({"seq": 1}) == 4, "read marks never move backwards"
    assert await mark({"seq": 999}) == 5, "beyond the last seq clamps to it"
    update = await laptop.expect(lambda f: f["type"] == "read_update")
    assert update["data"] == {"group_id": group, "last_read_seq": 5}

    assert await stray(phone, "read_update") == [], "the marking connection gets only its ack"
    groups = (await api(server, "GET", "/groups", bob)).json()["items"]
    assert [(g["last_read_seq"], g["unread_count"]) for g in groups] == [(5, 0)]


async def test_sync_replays_in_order_then_acks_with_has_more(
    server: ServerProcess, ws: Opener
) -> None:
    alice, bob = users("alice", "bob")
    group = await make_group(server, alice, bob)
    sender = await ws(server, alice)
    await send_many(sender, group, RESUME_LIMIT + 5)
    reader = await ws(server, bob)

    reply = await reader.request("sync", {"group_id": group, "after_seq": 3, "limit": 4})
    assert reply["type"] == "ack"
    assert reply["data"] == {"group_id": group, "last_seq": 7, "has_more": True}
    frames = [f for f in reader.backlog if f["type"] == "new_message"]
    assert [f["data"]["seq"] for f in frames] == [4, 5, 6, 7]
    assert all(f["message_id"] == f["data"]["message_id"] for f in frames)
    reader.backlog.clear()

    # Without a limit at most WS_RESUME_LIMIT come back.
    reply = await reader.request("sync", {"group_id": group, "after_seq": 0})
    assert reply["data"] == {"group_id": group, "last_seq": RESUME_LIMIT, "has_more": True}
    replayed = [f["data"]["seq"] for f in reader.backlog if f["type"] == "new_message"]
    assert replayed == list(range(1, RESUME_LIMIT + 1))
    reader.backlog.clear()

    reply = await reader.request("sync", {"group_id": group, "after_seq": RESUME_LIMIT})
    assert reply["data"] == {"group_id": group, "last_seq": RESUME_LIMIT + 5, "has_more": False}
    replayed = [f["data"]["seq"] for f in reader.backlog if f["type"] == "new_message"]
    assert replayed == list(range(RESUME_LIMIT + 1, RESUME_LIMIT + 6))
    reader.backlog.clear()

    reply = await reader.request("sync", {"group_id": group, "after_seq": RESUME_LIMIT + 5})
    assert reply["data"] == {"group_id": group, "last_seq": RESUME_LIMIT + 5, "has_more": False}
    assert reader.backlog == []

    outsider = await ws(server, uid("eve"))
    assert await error_code(outsider, "sync", {"group_id": group, "after_seq": 0}) == 403


# -- §3.3 server → client ----------------------------------------------------------------------


async def test_notification_reaches_every_device_of_the_user(
    server: ServerProcess, ws: Opener
) -> None:
    bob, carol = users("bob", "carol")
    phone, laptop, other = await ws(server, bob), await ws(server, bob), await ws(server, carol)

    response = await api(
        server,
        "POST",
        "/notifications",
        "service",
        json={"user_ids": [bob], "type": "grade", "title": "Exam graded", "content": "A+"},
    )
    assert response.status_code == 201, response.text
    stored = response.json()["items"][0]

    for client in (phone, laptop):
        frame = await client.expect(lambda f: f["type"] == "notification")
        assert frame["data"] == {
            "notification_id": stored["notification_id"],
            "type": "grade",
            "title": "Exam graded",
            "content": "A+",
            "created_at": stored["created_at"],
        }
    assert await stray(other, "notification") == []
    # A user token may not push notifications.
    forbidden = await api(
        server, "POST", "/notifications", bob, json={"user_ids": [carol], "type": "x", "title": "x"}
    )
    assert forbidden.status_code == 403


# -- §3.5 errors and close codes ---------------------------------------------------------------


async def test_error_codes_400_401_403_413(main_server: ServerProcess, ws: Opener) -> None:
    alice, bob = users("alice", "bob")
    group = await make_group(main_server, alice)
    foreign = await make_group(main_server, bob)
    client = await ws(main_server)

    for type in ("send_message", "join_group", "leave_group", "mark_read", "sync"):
        assert await error_code(client, type, {"group_id": group}) == 401
    assert (await client.auth(token(alice)))["type"] == "auth_success"

    assert await error_code(client, "teleport", {"group_id": group}) == 400
    assert await error_code(client, "send_message", {"group_id": group, "msg_type": 9}) == 400
    content = {"group_id": foreign, "content": "hi"}
    assert await error_code(client, "send_message", content) == 403
    assert await error_code(client, "mark_read", {"group_id": foreign, "seq": 1}) == 403

    emoji = "😀"  # one code point, four UTF-8 bytes, two UTF-16 units
    too_long = {"group_id": group, "content": emoji * 4001}
    assert await error_code(client, "send_message", too_long) == 413
    ok = await client.request("send_message", {"group_id": group, "content": emoji * 4000})
    assert ok["type"] == "ack" and ok["data"]["seq"] == 1
    history = (await api(main_server, "GET", f"/groups/{group}/messages", alice)).json()
    assert [len(m["content"]) for m in history["items"]] == [4000]


async def test_rate_limit_gives_429_and_stores_nothing_extra(
    strict_server: ServerProcess, ws: Opener
) -> None:
    alice = uid("alice")
    group = await make_group(strict_server, alice)
    client = await ws(strict_server, alice)

    ids = [
        await client.send("send_message", {"group_id": group, "content": f"m{i}"})
        for i in range(10)
    ]
    replies = [await client.reply(message_id) for message_id in ids]
    acked = [r for r in replies if r["type"] == "ack"]
    limited = [r for r in replies if r["type"] == "error"]
    assert [r["type"] for r in replies[:3]] == ["ack"] * 3, "the burst of 3 goes through"
    assert len(limited) >= 3, "10 sends in well under 4 s: at most 3 + 1 per second pass"
    assert all(r["data"]["code"] == 429 for r in limited)
    history = (await api(strict_server, "GET", f"/groups/{group}/messages", alice)).json()
    assert [m["seq"] for m in history["items"]] == [r["data"]["seq"] for r in acked]
    assert (await client.request("ping"))["type"] == "pong"


async def test_binary_frame_closes_with_1003(main_server: ServerProcess, ws: Opener) -> None:
    client = await ws(main_server, uid("alice"))
    await client.ws.send(b"\x00\x01binary")
    assert await client.closed_code() == 1003


async def test_auth_timeout_closes_with_1008(strict_server: ServerProcess, ws: Opener) -> None:
    client = await ws(strict_server)
    started = time.monotonic()
    assert (await client.request("ping"))["type"] == "pong"
    assert await client.closed_code(timeout=10) == 1008
    assert time.monotonic() - started >= 1.9


async def test_three_failed_auths_close_with_1008(main_server: ServerProcess, ws: Opener) -> None:
    client = await ws(main_server)
    for attempt in range(3):
        failed = await client.request("auth", {"token": f"bad-{attempt}"})
        assert failed["type"] == "auth_failed" and failed["data"]["code"] == 401
    assert await client.closed_code() == 1008


async def test_frame_over_the_size_limit_closes_with_1009(
    main_server: ServerProcess, ws: Opener
) -> None:
    client = await ws(main_server, uid("alice"))
    await client.ws.send('{"type":"ping","data":{"pad":"' + "x" * 70_000 + '"}}')
    assert await client.closed_code() == 1009


async def test_instance_full_refuses_the_handshake_with_503(
    capacity_server: ServerProcess, ws: Opener
) -> None:
    before = await refused(capacity_server, "full")
    first = await ws(capacity_server, uid("alice"))
    await ws(capacity_server)
    with pytest.raises(InvalidStatus) as refusal:
        await WsClient.open(capacity_server.ws_url)
    assert refusal.value.response.status_code == 503
    assert refusal.value.response.headers["Retry-After"] == "1"
    assert (await first.request("ping"))["type"] == "pong", "open connections are unaffected"
    assert await refused(capacity_server, "full") == before + 1
    await assert_refusals_logged_at_info(capacity_server)


async def test_origin_check_at_the_handshake(main_server: ServerProcess) -> None:
    url = main_server.ws_url
    before = await refused(main_server, "origin")
    assert await handshake_status(url, origin="http://evil.example") == 403
    assert await handshake_status(url, origin="http://allowed.example") == 101
    assert await handshake_status(url, origin=f"http://127.0.0.1:{main_server.port}") == 101
    assert await handshake_status(url) == 101
    assert await refused(main_server, "origin") == before + 1
    await assert_refusals_logged_at_info(main_server)


async def test_per_ip_handshake_limit_ignores_forwarded_for_from_untrusted_peers(
    proxy_server: ServerProcess,
) -> None:
    url = proxy_server.ws_url
    before = await refused(proxy_server, "rate")
    untrusted = {"local_addr": ("127.0.0.2", 0)}  # a peer that is not in TRUSTED_PROXIES
    for i in range(3):
        headers = {"X-Forwarded-For": f"203.0.113.{i}"}
        assert await handshake_status(url, additional_headers=headers, **untrusted) == 101
    # Its X-Forwarded-For is not believed: every handshake counted for 127.0.0.2.
    headers = {"X-Forwarded-For": "198.51.100.7"}
    assert await handshake_status(url, additional_headers=headers, **untrusted) == 429
    status, response_headers = await handshake(url, **untrusted)
    assert status == 429
    # The per-IP window is a minute: the client is told when it frees, not "1".
    assert 1 <= int(response_headers["Retry-After"]) <= 60
    assert await refused(proxy_server, "rate") == before + 2
    await assert_refusals_logged_at_info(proxy_server)


async def test_forwarded_for_counts_clients_behind_a_trusted_proxy(
    proxy_server: ServerProcess,
) -> None:
    url = proxy_server.ws_url
    first = {"X-Forwarded-For": "203.0.113.1"}
    second = {"X-Forwarded-For": "10.9.8.7, 203.0.113.2"}
    for _ in range(3):
        assert await handshake_status(url, additional_headers=first) == 101
    assert await handshake_status(url, additional_headers=first) == 429
    assert await handshake_status(url, additional_headers=second) == 101
    assert await handshake_status(url) == 101, "the proxy itself is a client of its own"


async def test_unrefreshed_token_expiry_closes_with_4001(
    main_server: ServerProcess, ws: Opener
) -> None:
    client = await ws(main_server)
    ok = await client.request("auth", {"token": token(uid("alice"), ttl=2)})
    assert ok["type"] == "auth_success"
    assert await client.closed_code(timeout=6) == 4001


async def test_refreshed_token_keeps_the_connection_past_the_first_expiry(
    main_server: ServerProcess, ws: Opener
) -> None:
    alice = uid("alice")
    client = await ws(main_server)
    first = await client.request("auth", {"token": token(alice, ttl=2)})
    assert first["type"] == "auth_success"
    refreshed = await client.request("auth", {"token": token(alice, ttl=600)})
    assert refreshed["type"] == "auth_success"
    assert refreshed["data"]["expires_at"] > first["data"]["expires_at"]

    past_first_expiry = first["data"]["expires_at"] / 1000 - time.time() + 1.0
    with pytest.raises(TimeoutError):
        await client.closed_code(timeout=past_first_expiry)
    assert (await client.request("ping"))["type"] == "pong"


# -- multi-device, idempotency, resume, concurrency ---------------------------------------------


async def test_every_connection_of_a_user_receives_including_the_senders_own(
    server: ServerProcess, ws: Opener
) -> None:
    alice, bob = users("alice", "bob")
    group = await make_group(server, alice, bob)
    alice_phone, alice_laptop = await ws(server, alice), await ws(server, alice)
    bob_phone, bob_laptop = await ws(server, bob), await ws(server, bob)

    acks = await send_many(alice_phone, group, 3)
    for client in (alice_phone, alice_laptop, bob_phone, bob_laptop):
        received = await client.messages(3)
        assert [m["message_id"] for m in received] == [a["message_id"] for a in acks]
        assert await stray(client) == []


async def test_send_retry_with_the_same_message_id_is_idempotent(
    server: ServerProcess, ws: Opener
) -> None:
    alice, bob = users("alice", "bob")
    group = await make_group(server, alice, bob)
    sender, receiver = await ws(server, alice), await ws(server, bob)
    body = {"group_id": group, "content": "only once"}

    first = await sender.request("send_message", body, message_id="retry-1")
    again = await sender.request("send_message", body, message_id="retry-1")
    assert first["type"] == again["type"] == "ack"
    assert again["data"] == first["data"]
    after = await sender.request("send_message", {"group_id": group, "content": "next"})
    assert after["data"]["seq"] == first["data"]["seq"] + 1

    for client in (receiver, sender):
        received = await client.messages(2)
        assert [m["seq"] for m in received] == [1, 2]
        assert received[0]["message_id"] == first["data"]["message_id"]
        assert await stray(client) == []
    history = (await api(server, "GET", f"/groups/{group}/messages", bob)).json()["items"]
    assert [m["content"] for m in history] == ["only once", "next"]


async def test_resume_replays_the_missed_then_continues_live_while_others_send(
    server: ServerProcess, ws: Opener
) -> None:
    alice, bob, carol = users("alice", "bob", "carol")
    group = await make_group(server, alice, bob, carol)
    total = 35
    sender, watcher = await ws(server, alice), await ws(server, carol)
    receiver = await ws(server, bob)
    await send_many(sender, group, 5)
    seen = [m["seq"] for m in await receiver.messages(5)]
    await receiver.close()
    await send_many(sender, group, 5)  # missed while offline

    halfway = asyncio.Event()

    async def keep_sending() -> None:
        for i in range(total - 10):
            ack = await sender.request("send_message", {"group_id": group, "content": f"c{i}"})
            assert ack["type"] == "ack"
            if i == 5:
                halfway.set()

    sending = asyncio.create_task(keep_sending())
    async with asyncio.timeout(10):
        await halfway.wait()
    resumed = await ws(server, bob, resume={group: seen[-1]})
    await sending

    got = [m["seq"] for m in await resumed.messages(total - 5)]
    assert got == list(range(6, total + 1))
    assert await stray(resumed) == []
    assert [m["seq"] for m in await watcher.messages(total)] == list(range(1, total + 1))


async def test_resume_ahead_of_the_group_replays_nothing(
    main_server: ServerProcess, ws: Opener
) -> None:
    alice = uid("alice")
    group = await make_group(main_server, alice)
    sender = await ws(main_server, alice)
    await send_many(sender, group, 2)
    client = await ws(main_server, alice, resume={group: 99, str(uuid.uuid4()): 3})
    assert await stray(client) == []
    await send_many(sender, group, 1)
    assert [m["seq"] for m in await client.messages(1)] == [3]


async def test_concurrent_senders_every_receiver_gets_each_seq_once_in_order(
    server: ServerProcess, ws: Opener
) -> None:
    senders_n, per_sender = 4, 15
    total = senders_n * per_sender
    names = users(*(f"s{i}" for i in range(senders_n)), "r1", "r2")
    group = await make_group(server, names[0], *names[1:])
    clients = [await ws(server, name) for name in names]
    senders = clients[:senders_n]

    acks = await asyncio.gather(
        *(send_many(client, group, per_sender, tag=f"s{i}") for i, client in enumerate(senders))
    )
    assert sorted(a["seq"] for batch in acks for a in batch) == list(range(1, total + 1))

    contents = None
    for client in clients:
        received = await client.messages(total)
        assert [m["seq"] for m in received] == list(range(1, total + 1))
        if contents is None:
            contents = [m["content"] for m in received]
        assert [m["content"] for m in received] == contents
        assert await stray(client) == []


async def test_slow_consumer_is_closed_with_1013_and_others_get_everything(
    strict_server: ServerProcess, ws: Opener
) -> None:
    server = strict_server  # WS_SEND_QUEUE=8
    alice, bob, slowpoke = users("alice", "bob", "slow")
    group = await make_group(server, alice, bob, slowpoke)
    fast = await ws(server, bob)

    # A client that stops reading: a tiny socket receive buffer and a tiny frame queue.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    sock.setblocking(False)
    slow = await connect(server.ws_url, sock=sock, max_queue=2, max_size=None, ping_interval=None)
    try:
        async with asyncio.timeout(10):
            await slow.send(
                orjson.dumps({"type": "auth", "data": {"token": token(slowpoke)}}).decode()
            )
            assert orjson.loads(await slow.recv())["type"] == "auth_success"

        # 60 kB per message, in all several times what the kernel's socket buffers absorb.
        body = "漢" * SLOW_CONTENT_CHARS
        count = max(200, 3 * max_socket_send_buffer() // len(body.encode()))
        receiving = asyncio.create_task(fast.messages(count, timeout=30))
        async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
            for _ in range(count):
                sent = await http.post(
                    f"/api/v1/groups/{group}/messages",
                    json={"content": body},
                    headers=bearer(alice),
                )
                assert sent.status_code == 201, sent.text
        received = await asyncio.wait_for(receiving, 60)
        assert [m["seq"] for m in received] == list(range(1, count + 1))
        assert fast.ws.close_code is None

        # Now it reads again: what was sent before the overflow, in order, then 1013.
        got: list[int] = []
        with pytest.raises(ConnectionClosed):
            async with asyncio.timeout(20):
                while True:
                    frame = orjson.loads(await slow.recv())
                    if frame["type"] == "new_message":
                        got.append(frame["data"]["seq"])
        assert slow.close_code == 1013
        assert got == list(range(1, len(got) + 1)) and len(got) < count
    finally:
        await slow.close()

    # It recovers by resuming from the last seq it saw.
    back = await ws(server, slowpoke, resume={group: len(got)})
    assert [m["seq"] for m in await back.messages(count - len(got))] == list(
        range(len(got) + 1, count + 1)
    )


async def test_membership_changes_apply_to_open_connections(
    server: ServerProcess, ws: Opener
) -> None:
    owner, member, newcomer = users("owner", "member", "newcomer")
    group = await make_group(server, owner, member)
    owner_c, member_c, newcomer_c = (
        await ws(server, owner),
        await ws(server, member),
        await ws(server, newcomer),
    )
    await send_many(owner_c, group, 1)
    assert [m["seq"] for m in await member_c.messages(1)] == [1]

    removed = await api(server, "DELETE", f"/groups/{group}/members/{member}", owner)
    assert removed.status_code == 204
    added = await api(server, "POST", f"/groups/{group}/members", owner, json={"user_id": newcomer})
    assert added.status_code == 201, added.text
    await send_many(owner_c, group, 1)

    assert [m["seq"] for m in await owner_c.messages(2)] == [1, 2]
    assert [m["seq"] for m in await newcomer_c.messages(1)] == [2]
    assert await stray(member_c) == []
    assert await error_code(member_c, "send_message", {"group_id": group, "content": "x"}) == 403


# -- lifecycle, metrics, presence -------------------------------------------------------------


async def test_sigterm_closes_clients_with_1012_and_the_process_exits(
    shutdown_server: ServerProcess, ws: Opener
) -> None:
    clients = [await ws(shutdown_server, uid("alice")), await ws(shutdown_server)]
    assert shutdown_server.proc is not None
    shutdown_server.proc.send_signal(signal.SIGTERM)
    for client in clients:
        assert await client.closed_code(timeout=10) in (1012, 1001)
    code = await asyncio.to_thread(shutdown_server.proc.wait, 20)
    # uvicorn re-raises the signal once its graceful shutdown is complete.
    assert code in (0, -signal.SIGTERM), shutdown_server.log()
    assert "Application shutdown complete" in shutdown_server.log()


def test_ready_is_503_and_handshakes_refused_once_shutdown_began(tmp_path: Path) -> None:
    settings = Settings(SQLITE_PATH=str(tmp_path / "t.db"), JWT_SECRET=SECRET, _env_file=None)
    lifecycle = Lifecycle()
    with TestClient(create_app(settings, lifecycle)) as client:
        assert client.get("/ready").status_code == 200
        lifecycle.shutting_down = True
        response = client.get("/ready")
        assert response.status_code == 503
        assert response.json()["status"] == "not ready"
        with pytest.raises(WebSocketDenialResponse) as refused:
            with client.websocket_connect("/ws"):
                pass
        assert refused.value.status_code == 503


def test_shutdown_writes_the_last_departures_before_the_presence_store_closes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A closed connection's presence write runs beside it (app/realtime/presence.py); at
    shutdown the ones still under way finish before the store's client goes, or the users
    would show online elsewhere until PRESENCE_TTL."""
    import app.main

    order: list[str] = []

    class SlowStore(MemoryPresence):
        async def disconnect(self, user_id: str, conn_id: str, groups: Any) -> None:
            await asyncio.sleep(0.3)  # a store that answers slowly
            await super().disconnect(user_id, conn_id, groups)
            order.append(f"offline {user_id}")

        async def close(self) -> None:
            order.append("store closed")

    monkeypatch.setattr(app.main, "make_presence", lambda settings: SlowStore())
    settings = Settings(SQLITE_PATH=str(tmp_path / "t.db"), JWT_SECRET=SECRET, _env_file=None)
    with TestClient(create_app(settings)) as client:
        with client.websocket_connect("/ws") as ws:
            ws.send_json({"type": "auth", "message_id": "a", "data": {"token": token("dora")}})
            assert ws.receive_json()["type"] == "auth_success"
    assert order == ["offline dora", "store closed"]


async def test_metrics_move_with_connections_messages_errors_and_replays(
    main_server: ServerProcess, ws: Opener
) -> None:
    server = main_server

    async def idle() -> bool:  # the previous tests' connections are unregistered
        return metric(await metrics_text(server), "websocket_connections_total") == 0

    await eventually(idle)
    alice = uid("alice")
    group = await make_group(server, alice)
    before = await metrics_text(server)

    def delta(after: str, name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    one, two = await ws(server, alice), await ws(server, alice)
    await send_many(one, group, 2)
    await two.messages(2)
    bad = await ws(server)
    for _ in range(3):
        assert (await bad.request("auth", {"token": "nope"}))["type"] == "auth_failed"
    assert await bad.closed_code() == 1008
    resumed = await ws(server, alice, resume={group: 0})
    await resumed.messages(2)
    during = await metrics_text(server)
    assert delta(during, "websocket_connections_total") == 3
    assert delta(during, "websocket_online_users") == 1
    assert delta(during, "websocket_errors_total", type="auth") == 3
    assert delta(during, "websocket_disconnects_total", code="1008") == 1
    assert delta(during, "websocket_replayed_messages_total") == 2
    assert delta(during, "websocket_messages_total", type="send") == 4  # 2 messages × 2 conns
    assert delta(during, "websocket_messages_total", type="receive") >= 3 + 3 + 2
    assert 'service="campushub-realtime"' in during

    await one.ws.send(b"binary")  # the server closes it: metrics are updated before we see it
    assert await one.closed_code() == 1003
    after = await metrics_text(server)
    assert delta(after, "websocket_connections_total") == 2
    assert delta(after, "websocket_disconnects_total", code="1003") == 1


async def test_online_lists_connected_members_and_drops_them_after_disconnect(
    main_server: ServerProcess, ws: Opener
) -> None:
    alice, bob, carol = users("alice", "bob", "carol")
    group = await make_group(main_server, alice, bob, carol)

    async def online() -> list[str]:
        response = await api(main_server, "GET", f"/groups/{group}/online", alice)
        assert response.status_code == 200
        return list(response.json()["user_ids"])

    assert await online() == []
    await ws(main_server, alice)
    bob_phone, bob_laptop = await ws(main_server, bob), await ws(main_server, bob)
    await ws(main_server, uid("stranger"))
    assert await online() == sorted([alice, bob])

    await bob_phone.ws.send(b"x")  # closed by the server (1003): presence updated first
    assert await bob_phone.closed_code() == 1003
    assert await online() == sorted([alice, bob]), "bob is still online on another device"
    await bob_laptop.close()

    async def bob_gone() -> bool:
        return await online() == [alice]

    await eventually(bob_gone)
    outsider = await api(main_server, "GET", f"/groups/{group}/online", uid("eve"))
    assert outsider.status_code == 404
