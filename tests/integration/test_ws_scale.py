"""Fan-out at scale: 500 authenticated clients of one group on one embedded server, each
receiving every message exactly once and in order. Reports wall time and server CPU; it
asserts correctness only, never timing."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect

from tests.support.server import ServerProcess
from tests.support.tokens import bearer, token

CLIENTS = 500
MESSAGES = 50
OPEN_CONCURRENCY = 50


class Member:
    """One raw connection with a reader task recording what arrives."""

    def __init__(self, user: str, ws: ClientConnection) -> None:
        self.user = user
        self.ws = ws
        self.seqs: list[int] = []
        self.message_ids: list[str] = []
        self.acks: dict[str, dict[str, Any]] = {}
        self.others: list[dict[str, Any]] = []
        self.done = asyncio.Event()
        self.pong = asyncio.Event()
        self.expect_acks = 0
        self.reader: asyncio.Task[None] | None = None

    async def read(self) -> None:
        async for raw in self.ws:
            frame = orjson.loads(raw)
            kind = frame["type"]
            if kind == "new_message":
                self.seqs.append(frame["data"]["seq"])
                self.message_ids.append(frame["data"]["message_id"])
            elif kind == "ack":
                self.acks[frame["message_id"]] = frame["data"]
            elif kind == "pong":
                self.pong.set()
            else:
                self.others.append(frame)
            if len(self.seqs) >= MESSAGES and len(self.acks) >= self.expect_acks:
                self.done.set()


async def open_member(server: ServerProcess, user: str) -> Member:
    ws = await connect(
        server.ws_url, max_size=None, compression=None, ping_interval=None, open_timeout=30
    )
    await ws.send(orjson.dumps({"type": "auth", "data": {"token": token(user)}}).decode())
    reply = orjson.loads(await ws.recv())
    assert reply["type"] == "auth_success", reply
    member = Member(user, ws)
    member.reader = asyncio.create_task(member.read())
    return member


async def test_500_clients_each_receive_every_message_once_in_order(
    server_factory: Callable[..., ServerProcess],
    record_property: Callable[[str, object], None],
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = server_factory(
        {
            "WS_CONNECT_RATE_PER_IP": "100000",
            "RATE_LIMIT_MESSAGES_PER_SECOND": "1000",
            "RATE_LIMIT_BURST": "1000",
        }
    )
    tag = uuid.uuid4().hex[:6]
    names = [f"u{i:03d}-{tag}" for i in range(CLIENTS)]
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as http:
        created = await http.post(
            "/api/v1/groups",
            json={"name": "everyone", "member_ids": names[1:]},
            headers=bearer(names[0]),
        )
    assert created.status_code == 201, created.text
    group = created.json()["group_id"]

    members: list[Member] = []
    gate = asyncio.Semaphore(OPEN_CONCURRENCY)

    async def join(user: str) -> None:
        async with gate:
            members.append(await open_member(server, user))

    try:
        async with asyncio.timeout(90):
            started = time.perf_counter()
            await asyncio.gather(*(join(user) for user in names))
            connect_seconds = time.perf_counter() - started

            sender = next(m for m in members if m.user == names[0])
            sender.expect_acks = MESSAGES
            cpu_before = server.cpu_seconds()
            started = time.perf_counter()
            ids = []
            for i in range(MESSAGES):
                message_id = f"scale-{tag}-{i}"
                ids.append(message_id)
                frame = {
                    "type": "send_message",
                    "message_id": message_id,
                    "data": {"group_id": group, "content": f"broadcast {i}"},
                }
                await sender.ws.send(orjson.dumps(frame).decode())
            await asyncio.gather(*(m.done.wait() for m in members))
            fanout_seconds = time.perf_counter() - started
            cpu_fanout = server.cpu_seconds() - cpu_before

            # Nothing more is on its way to anyone: a ping is answered before any extra frame.
            for member in members:
                await member.ws.send('{"type": "ping"}')
            await asyncio.gather(*(m.pong.wait() for m in members))
    finally:
        for member in members:
            if member.reader is not None:
                member.reader.cancel()
        await asyncio.gather(
            *(asyncio.wait_for(m.ws.close(), 10) for m in members), return_exceptions=True
        )

    assert len(members) == CLIENTS
    expected_ids = [sender.acks[i]["message_id"] for i in ids]
    assert [sender.acks[i]["seq"] for i in ids] == list(range(1, MESSAGES + 1))
    wrong = [m.user for m in members if m.seqs != list(range(1, MESSAGES + 1))]
    assert wrong == [], f"{len(wrong)} clients got a different sequence, e.g. {wrong[:3]}"
    assert all(m.message_ids == expected_ids for m in members)
    assert [m.others for m in members if m.others] == []

    cpu_total = server.cpu_seconds()
    frames = CLIENTS * MESSAGES
    summary = (
        f"{CLIENTS} clients x {MESSAGES} messages = {frames} frames: "
        f"connect+auth {connect_seconds:.2f}s, fan-out wall {fanout_seconds:.2f}s "
        f"({frames / fanout_seconds:.0f} frames/s), server CPU during fan-out "
        f"{cpu_fanout:.2f}s, server CPU total {cpu_total:.2f}s"
    )
    record_property("connect_seconds", round(connect_seconds, 3))
    record_property("fanout_wall_seconds", round(fanout_seconds, 3))
    record_property("fanout_server_cpu_seconds", round(cpu_fanout, 3))
    record_property("server_cpu_seconds_total", round(cpu_total, 3))
    print(summary)
    with capsys.disabled():
        print(f"\n[ws-scale] {summary}")
