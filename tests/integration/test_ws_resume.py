"""A resume past WS_RESUME_LIMIT says so in auth_success, and sync pages on to the end."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from tests.support.server import ServerProcess
from tests.support.tokens import bearer, token
from tests.support.wsclient import WsClient


async def test_resume_over_the_limit_reports_has_more_and_sync_pages_on(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory({"WS_RESUME_LIMIT": "5"})
    async with httpx.AsyncClient(base_url=server.base_url) as http:
        group = (
            await http.post(
                "/api/v1/groups", json={"name": "r", "member_ids": ["bob"]}, headers=bearer("al")
            )
        ).json()["group_id"]
        for i in range(12):
            sent = await http.post(
                f"/api/v1/groups/{group}/messages", json={"content": f"m{i}"}, headers=bearer("al")
            )
            assert sent.status_code == 201
    bob = await WsClient.open(server.ws_url)
    success = await bob.auth(token("bob"), resume={group: 0})
    assert success["data"]["resume"] == {group: {"last_seq": 5, "has_more": True}}
    assert [m["seq"] for m in await bob.messages(5)] == [1, 2, 3, 4, 5]
    page = await bob.request("sync", {"group_id": group, "after_seq": 5})
    assert page["data"] == {"group_id": group, "last_seq": 10, "has_more": True}
    page = await bob.request("sync", {"group_id": group, "after_seq": 10})
    assert page["data"] == {"group_id": group, "last_seq": 12, "has_more": False}
    assert [m["seq"] for m in await bob.messages(7)] == list(range(6, 13))
    # nothing to replay: an empty resume summary
    again = await WsClient.open(server.ws_url)
    assert (await again.auth(token("bob"), resume={group: 12}))["data"]["resume"] == {}
    await bob.close()
    await again.close()
