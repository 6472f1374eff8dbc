"""nginx (Debian's package, the shipped config) in front of two real instances."""

from __future__ import annotations

import re
from collections.abc import Callable

import httpx
import pytest

from tests.deploy.nginx_harness import nginx_proxy, require_tool
from tests.support.server import ServerProcess
from tests.support.tokens import bearer, token
from tests.support.wsclient import WsClient

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


def open_connections(server: ServerProcess) -> float:
    text = httpx.get(f"{server.base_url}/metrics").text
    match = re.search(r"^websocket_connections_total\{[^}]*\} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


async def test_clients_on_different_instances_through_nginx_ws_and_wss(
    server_factory: Callable[..., ServerProcess], pg_url: str, redis_url: str
) -> None:
    require_tool("nginx")
    env = {
        "DATABASE_URL": pg_url,
        "REDIS_URL": redis_url,
        "TRUSTED_PROXIES": "127.0.0.1",
        "WS_CONNECT_RATE_PER_IP": "1000",
    }
    a, b = (server_factory(env, wait=False) for _ in range(2))
    a.wait_ready(), b.wait_ready()
    upstreams = [f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"]
    with nginx_proxy(upstreams, tls=True, balancing="round_robin") as proxy:
        assert httpx.get(f"{proxy.http_url}/health").json() == {"status": "ok"}
        created = httpx.post(
            f"{proxy.http_url}/api/v1/groups",
            json={"name": "via nginx", "member_ids": ["bob"]},
            headers=bearer("alice"),
        )
        assert created.status_code == 201, created.text
        group = created.json()["group_id"]

        alice = await WsClient.open(proxy.ws_url)
        await alice.auth(token("alice"))
        bob = await WsClient.open(proxy.wss_url, ssl=proxy.client_ssl_context())
        await bob.auth(token("bob"))
        # round robin put one on each instance
        assert (open_connections(a), open_connections(b)) == (1.0, 1.0)

        ack = await alice.request("send_message", {"group_id": group, "content": "over ws"})
        assert ack["type"] == "ack"
        assert (await bob.messages(1))[0]["content"] == "over ws"
        ack = await bob.request("send_message", {"group_id": group, "content": "over wss"})
        assert ack["type"] == "ack"
        got = await alice.messages(2)
        assert [m["content"] for m in got] == ["over ws", "over wss"]
        await alice.close()
        await bob.close()
