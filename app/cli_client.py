"""A small interactive /ws client: prints every frame, sends each typed line to a group."""

from __future__ import annotations

import asyncio
import itertools
import sys
import time

import orjson
from websockets.asyncio.client import connect


async def _run(url: str, token: str, group: str | None) -> int:
    ids = itertools.count(1)

    def frame(type: str, data: dict[str, object]) -> str:
        return orjson.dumps(
            {
                "type": type,
                "message_id": f"cli-{time.time_ns()}-{next(ids)}",
                "timestamp": time.time_ns() // 1_000_000,
                "data": data,
            }
        ).decode()

    async with connect(url, max_size=None) as ws:
        await ws.send(frame("auth", {"token": token}))

        async def printer() -> None:
            async for raw in ws:
                message = orjson.loads(raw)
                data = message.get("data", {})
                if message.get("type") == "new_message":
                    print(
                        f"[{data['group_id'][:8]} #{data['seq']}] {data['sender_name']}: "
                        f"{data['content'] or data['image_url']}",
                        flush=True,
                    )
                else:
                    print(f"<- {message.get('type')} {orjson.dumps(data).decode()}", flush=True)

        reader = asyncio.create_task(printer())
        loop = asyncio.get_running_loop()
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                break
            text = line.rstrip("\n")
            if not text:
                continue
            if text.startswith("/join "):
                await ws.send(frame("join_group", {"group_id": text.split(" ", 1)[1]}))
            elif text.startswith("/group "):
                group = text.split(" ", 1)[1]
                print(f"-- sending to {group}", flush=True)
            elif group is None:
                print("-- no group: start with --group ID or type /group ID", flush=True)
            else:
                await ws.send(
                    frame("send_message", {"group_id": group, "msg_type": 1, "content": text})
                )
        reader.cancel()
    return 0


def run_client(url: str, token: str, group: str | None) -> int:
    try:
        return asyncio.run(_run(url, token, group))
    except KeyboardInterrupt:
        return 0
