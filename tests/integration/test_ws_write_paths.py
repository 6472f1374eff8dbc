"""Both write paths (direct socket writes, and the plain ASGI send) deliver the same."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import pytest

from tests.support.server import ServerProcess
from tests.support.tokens import bearer, token
from tests.support.wsclient import WsClient


@pytest.mark.parametrize("direct", ["true", "false"])
async def test_concurrent_senders_reach_every_receiver_in_order(
    server_factory: Callable[..., ServerProcess], direct: str
) -> None:
    server = server_factory({"WS_DIRECT_WRITES": direct, "RATE_LIMIT_BURST": "100"})
    users = ["s1", "s2", "r1", "r2", "r3"]
    async with httpx.AsyncClient() as http:
        created = await http.post(
            f"{server.base_url}/api/v1/groups",
            json={"name": "paths", "member_ids": users[1:]},
            headers=bearer("s1"),
        )
    group = created.json()["group_id"]
    clients = {u: await WsClient.open(server.ws_url) for u in users}
    for user, client in clients.items():
        assert (await client.auth(token(user)))["type"] == "auth_success"

    async def burst(user: str) -> None:
        for i in range(15):
            reply = await clients[user].request(
                "send_message", {"group_id": group, "content": f"{user}-{i}" + "é" * 300}
            )
            assert reply["type"] == "ack"

    await asyncio.gather(burst("s1"), burst("s2"))
    for user in ("r1", "r2", "r3", "s1"):
        got = await clients[user].messages(30)
        assert [m["seq"] for m in got] == list(range(1, 31))
    for client in clients.values():
        await client.close()
