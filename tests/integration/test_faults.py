"""Outages of Redis and of the database while messages flow: nothing acked is lost."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from tests.support.faults import RedisServer, TcpProxy
from tests.support.server import ServerProcess
from tests.support.tokens import bearer, token
from tests.support.wsclient import WsClient

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

Start = Callable[..., ServerProcess]
FAST = {
    "WS_CONNECT_RATE_PER_IP": "100000",
    "RATE_LIMIT_MESSAGES_PER_SECOND": "1000",
    "RATE_LIMIT_BURST": "1000",
    "FANOUT_STALL_TIMEOUT": "3",
}


@pytest.fixture
def own_redis(tmp_path: Path, redis_url: str) -> Iterator[RedisServer]:
    """A redis-server of this test's own (the shared one is only checked to exist)."""
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


async def ready_status(server: ServerProcess) -> int:
    async with httpx.AsyncClient() as http:
        return (await http.get(f"{server.base_url}/ready", timeout=5)).status_code


async def wait_ready_status(server: ServerProcess, status: int, timeout: float = 15) -> None:
    async with asyncio.timeout(timeout):
        while await ready_status(server) != status:
            await asyncio.sleep(0.2)


async def send_all(client: WsClient, group: str, texts: list[str]) -> list[dict[str, object]]:
    acks = []
    for text in texts:
        reply = await client.request("send_message", {"group_id": group, "content": text})
        assert reply["type"] == "ack", reply
        acks.append(reply["data"])
    return acks


async def test_redis_outage_loses_and_duplicates_nothing(
    server_factory: Start, pg_url: str, own_redis: RedisServer
) -> None:
    env = {"DATABASE_URL": pg_url, "REDIS_URL": own_redis.url, **FAST}
    a, b = (server_factory(env, wait=False) for _ in range(2))
    a.wait_ready(), b.wait_ready()
    group = httpx.post(
        f"{a.base_url}/api/v1/groups",
        json={"name": "g", "member_ids": ["bob", "carol"]},
        headers=bearer("alice"),
    ).json()["group_id"]
    alice = await WsClient.open(a.ws_url)
    bob = await WsClient.open(b.ws_url)
    carol = await WsClient.open(a.ws_url)  # on the sender's instance
    for client, user in ((alice, "alice"), (bob, "bob"), (carol, "carol")):
        await client.auth(token(user))

    await send_all(alice, group, [f"before-{i}" for i in range(10)])
    assert [m["seq"] for m in await bob.messages(10)] == list(range(1, 11))
    assert [m["seq"] for m in await carol.messages(10)] == list(range(1, 11))

    own_redis.stop()
    await wait_ready_status(a, 503)
    # Stored while the bus is down: acked, since the database has them.
    acks = await send_all(alice, group, [f"during-{i}" for i in range(10)])
    assert [ack["seq"] for ack in acks] == list(range(11, 21))
    # Members on the sender's instance get them at once: no bus in between.
    assert [m["seq"] for m in await carol.messages(10)] == list(range(11, 21))

    own_redis.start()
    await wait_ready_status(a, 200)
    await wait_ready_status(b, 200)
    await send_all(alice, group, [f"after-{i}" for i in range(10)])
    got = await bob.messages(20, timeout=20)
    assert [m["seq"] for m in got] == list(range(11, 31))
    assert [m["content"] for m in got[:10]] == [f"during-{i}" for i in range(10)]
    # The bus's later copies of 11..20 (the outbox relay's) reach carol's instance too: skipped.
    assert [m["seq"] for m in await carol.messages(10)] == list(range(21, 31))
    for client in (bob, carol):
        with pytest.raises(TimeoutError):
            await client.expect(lambda f: f["type"] == "new_message", timeout=1.0)
    for client in (alice, bob, carol):
        await client.close()


def via_proxy(url: str, port: int) -> str:
    parts = urlsplit(url)
    user = parts.netloc.rsplit("@", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}@127.0.0.1:{port}"))


async def test_database_outage_answers_503_and_recovers(
    server_factory: Start, pg_url: str, redis_url: str
) -> None:
    proxy = await TcpProxy("127.0.0.1", urlsplit(pg_url).port or 5432).start()
    try:
        env = {"DATABASE_URL": via_proxy(pg_url, proxy.port), "REDIS_URL": redis_url, **FAST}
        server = server_factory(env)
        async with httpx.AsyncClient() as http:  # the proxy runs on this loop: never block it
            created = await http.post(
                f"{server.base_url}/api/v1/groups",
                json={"name": "g", "member_ids": ["bob"]},
                headers=bearer("alice"),
                timeout=20,
            )
        group = created.json()["group_id"]
        alice = await WsClient.open(server.ws_url)
        bob = await WsClient.open(server.ws_url)
        await alice.auth(token("alice"))
        await bob.auth(token("bob"))
        await send_all(alice, group, ["one"])

        await proxy.cut()
        async with asyncio.timeout(20):  # never a hang
            reply = await alice.request("send_message", {"group_id": group, "content": "lost?"})
        assert reply["type"] == "error" and reply["data"]["code"] == 503, reply
        assert await ready_status(server) == 503
        async with httpx.AsyncClient() as http:
            rest = await http.post(
                f"{server.base_url}/api/v1/groups/{group}/messages",
                json={"content": "rest"},
                headers=bearer("alice"),
                timeout=20,
            )
        assert rest.status_code == 503 and "detail" in rest.json()
        pong = await alice.request("ping")
        assert pong["type"] == "pong"  # the connection survived

        await proxy.restore()
        await wait_ready_status(server, 200)
        acks = await send_all(alice, group, ["two", "three"])
        assert [ack["seq"] for ack in acks] == [2, 3]  # the failed send stored nothing
        got = await bob.messages(3)
        assert [(m["seq"], m["content"]) for m in got] == [(1, "one"), (2, "two"), (3, "three")]
        await alice.close()
        await bob.close()
    finally:
        await proxy.close()


async def test_a_reader_that_stops_advancing_turns_ready_to_503(
    server_factory: Start, pg_url: str, own_redis: RedisServer
) -> None:
    """Writes paused in Redis: the canaries stop, the reader sees nothing new, and /ready
    says so (checks.fanout) instead of the instance silently going deaf."""
    import redis as redis_lib

    env = {"DATABASE_URL": pg_url, "REDIS_URL": own_redis.url, **FAST, "FANOUT_STALL_TIMEOUT": "2"}
    server = server_factory(env)
    await wait_ready_status(server, 200)
    admin = redis_lib.Redis.from_url(own_redis.url)
    try:
        admin.execute_command("CLIENT", "PAUSE", "8000", "WRITE")
        await wait_ready_status(server, 503, timeout=8)
        async with httpx.AsyncClient() as http:
            body = (await http.get(f"{server.base_url}/ready")).json()
        assert body["checks"]["fanout"] is False and body["checks"]["bus"] is True
        admin.execute_command("CLIENT", "UNPAUSE")
        await wait_ready_status(server, 200, timeout=15)
    finally:
        admin.close()
