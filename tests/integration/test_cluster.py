"""Several real instances on one Postgres and one Redis behave as one service."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable

import httpx
import pytest

from tests.support.server import ServerProcess
from tests.support.tokens import bearer, token
from tests.support.wsclient import WsClient

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

Start = Callable[..., ServerProcess]


def start_cluster(
    server_factory: Start, pg_url: str, redis_url: str, n: int, **env: str
) -> list[ServerProcess]:
    base = {
        "DATABASE_URL": pg_url,
        "REDIS_URL": redis_url,
        "WS_CONNECT_RATE_PER_IP": "100000",
        "RATE_LIMIT_MESSAGES_PER_SECOND": "1000",
        "RATE_LIMIT_BURST": "1000",
        **env,
    }
    servers = [server_factory(base, wait=False) for _ in range(n)]
    return [server.wait_ready() for server in servers]


def make_group(server: ServerProcess, owner: str, members: list[str]) -> str:
    response = httpx.post(
        f"{server.base_url}/api/v1/groups",
        json={"name": "cluster", "member_ids": members},
        headers=bearer(owner),
    )
    assert response.status_code == 201, response.text
    return str(response.json()["group_id"])


async def connect(server: ServerProcess, user: str) -> WsClient:
    client = await WsClient.open(server.ws_url)
    reply = await client.auth(token(user))
    assert reply["type"] == "auth_success", reply
    return client


async def test_member_on_b_receives_what_a_sends_once_in_order(
    server_factory: Start, pg_url: str, redis_url: str
) -> None:
    a, b = start_cluster(server_factory, pg_url, redis_url, 2)
    group = make_group(a, "alice", ["bob"])
    alice, bob = await connect(a, "alice"), await connect(b, "bob")
    for i in range(30):
        reply = await alice.request("send_message", {"group_id": group, "content": f"m{i}"})
        assert reply["type"] == "ack" and reply["data"]["seq"] == i + 1
    got = await bob.messages(30)
    assert [m["seq"] for m in got] == list(range(1, 31))
    assert [m["content"] for m in got] == [f"m{i}" for i in range(30)]
    own = await alice.messages(30)  # the sender's own connections get new_message too
    assert [m["seq"] for m in own] == list(range(1, 31))
    lag = re.search(
        r"^websocket_fanout_lag_seconds_count\{[^}]*\} (\S+)$",
        httpx.get(f"{b.base_url}/metrics").text,
        re.M,
    )
    assert lag is not None and float(lag.group(1)) >= 30  # stream entry → local delivery
    with pytest.raises(TimeoutError):
        await bob.expect(lambda f: f["type"] == "new_message", timeout=0.5)
    await alice.close()
    await bob.close()


async def test_concurrent_senders_on_three_instances(
    server_factory: Start, pg_url: str, redis_url: str
) -> None:
    servers = start_cluster(server_factory, pg_url, redis_url, 3)
    senders = [f"s{i}" for i in range(6)]
    receivers = [f"r{i}" for i in range(6)]
    group = make_group(servers[0], "owner", senders + receivers)
    send_clients = [await connect(servers[i % 3], u) for i, u in enumerate(senders)]
    recv_clients = [await connect(servers[i % 3], u) for i, u in enumerate(receivers)]
    per_sender = 25

    async def burst(client: WsClient, name: str) -> None:
        ids = [
            await client.send("send_message", {"group_id": group, "content": f"{name}-{i}"})
            for i in range(per_sender)
        ]
        for message_id in ids:
            reply = await client.reply(message_id)
            assert reply["type"] == "ack", reply

    await asyncio.gather(*(burst(c, n) for c, n in zip(send_clients, senders, strict=True)))
    total = per_sender * len(senders)
    for client in recv_clients:
        got = await client.messages(total, timeout=20)
        assert [m["seq"] for m in got] == list(range(1, total + 1))
        with pytest.raises(TimeoutError):
            await client.expect(lambda f: f["type"] == "new_message", timeout=0.3)
    for client in send_clients + recv_clients:
        await client.close()


async def test_member_removed_through_a_stops_receiving_on_b(
    server_factory: Start, pg_url: str, redis_url: str
) -> None:
    a, b = start_cluster(server_factory, pg_url, redis_url, 2)
    group = make_group(a, "alice", ["bob", "carol"])
    bob, carol = await connect(b, "bob"), await connect(b, "carol")
    removed = httpx.delete(
        f"{a.base_url}/api/v1/groups/{group}/members/bob", headers=bearer("alice")
    )
    assert removed.status_code == 204
    sent = httpx.post(
        f"{a.base_url}/api/v1/groups/{group}/messages",
        json={"content": "after removal"},
        headers=bearer("alice"),
    )
    assert sent.status_code == 201
    assert (await carol.messages(1))[0]["content"] == "after removal"
    with pytest.raises(TimeoutError):
        await bob.expect(lambda f: f["type"] == "new_message", timeout=1.0)
    # and an added member starts receiving on its open connection, without reconnecting
    dave = await connect(b, "dave")
    added = httpx.post(
        f"{a.base_url}/api/v1/groups/{group}/members",
        json={"user_id": "dave"},
        headers=bearer("alice"),
    )
    assert added.status_code == 201
    httpx.post(
        f"{a.base_url}/api/v1/groups/{group}/messages",
        json={"content": "welcome"},
        headers=bearer("alice"),
    )
    assert (await dave.messages(1))[0]["content"] == "welcome"
    for client in (bob, carol, dave):
        await client.close()


async def test_notification_reaches_every_device_on_other_instances(
    server_factory: Start, pg_url: str, redis_url: str
) -> None:
    a, b, c = start_cluster(server_factory, pg_url, redis_url, 3)
    devices = [await connect(b, "erin"), await connect(c, "erin"), await connect(c, "erin")]
    posted = httpx.post(
        f"{a.base_url}/api/v1/notifications",
        json={"user_ids": ["erin"], "type": "activity", "title": "Signed up", "content": "See you"},
        headers=bearer("svc", role="service"),
    )
    assert posted.status_code == 201, posted.text
    notification_id = posted.json()["items"][0]["notification_id"]
    for device in devices:
        frame = await device.expect(lambda f: f["type"] == "notification")
        assert frame["data"]["notification_id"] == notification_id
        assert frame["data"]["title"] == "Signed up"
        await device.close()


async def online(server: ServerProcess, group: str, user: str = "alice") -> list[str]:
    async with httpx.AsyncClient() as http:
        response = await http.get(
            f"{server.base_url}/api/v1/groups/{group}/online", headers=bearer(user)
        )
    assert response.status_code == 200, response.text
    return list(response.json()["user_ids"])


async def wait_online(
    servers: list[ServerProcess], group: str, expected: list[str], timeout: float
) -> float:
    """Poll every instance until all report `expected`; returns the seconds it took."""
    started = time.monotonic()
    while True:
        answers = [await online(s, group) for s in servers]
        if all(answer == expected for answer in answers):
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"presence never agreed on {expected}: {answers}")
        await asyncio.sleep(0.1)


async def test_presence_agrees_everywhere_and_sigkill_clears_within_ttl(
    server_factory: Start, pg_url: str, redis_url: str
) -> None:
    ttl = 3
    a, b, c = start_cluster(server_factory, pg_url, redis_url, 3, PRESENCE_TTL=str(ttl))
    group = make_group(a, "alice", ["bob", "carol"])
    bob_a, bob_b = await connect(a, "bob"), await connect(b, "bob")
    carol = await connect(c, "carol")
    await wait_online([a, b, c], group, ["bob", "carol"], timeout=5)
    # bob stays online while one of his two connections is left
    await bob_a.close()
    await wait_online([a, b, c], group, ["bob", "carol"], timeout=5)
    await bob_b.close()
    await wait_online([a, c], group, ["carol"], timeout=5)
    # carol's instance dies without a word: she is offline within the TTL
    c.kill()
    took = await wait_online([a, b], group, [], timeout=ttl + 3)
    assert took <= ttl + 2
    await carol.ws.close()
