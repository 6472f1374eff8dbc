"""`python -m app client`: the README's two-terminal demo."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable

import httpx

from tests.support.server import ROOT, ServerProcess
from tests.support.tokens import bearer, token
from tests.support.wsclient import WsClient


async def test_typed_lines_become_messages_and_incoming_ones_are_printed(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory()
    async with httpx.AsyncClient(base_url=server.base_url) as http:
        created = await http.post(
            "/api/v1/groups", json={"name": "cli", "member_ids": ["bob"]}, headers=bearer("alice")
        )
    group = created.json()["group_id"]
    bob = await WsClient.open(server.ws_url)
    await bob.auth(token("bob"))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "app",
        "client",
        "--url",
        server.ws_url,
        "--token",
        token("alice", name="Alice"),
        "--group",
        group,
        cwd=ROOT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        async with asyncio.timeout(30):
            line = await proc.stdout.readline()
            assert b"auth_success" in line
            proc.stdin.write(b"hello from the terminal\n")
            await proc.stdin.drain()
            got = await bob.messages(1)
            assert got[0]["content"] == "hello from the terminal"
            assert got[0]["sender_name"] == "Alice"
            await bob.request("send_message", {"group_id": group, "content": "hi back"})
            printed = b""
            while b"Bob: hi back" not in printed:
                printed += await proc.stdout.readline()
            assert f"[{group[:8]} #2] Bob: hi back".encode() in printed
    finally:
        proc.stdin.close()
        async with asyncio.timeout(10):
            await proc.wait()
        await bob.close()
