"""Baseline (a): the `websockets` library's own asyncio server with `websockets.broadcast()`.

The practical floor for a Python push server: one frame encoded per message, written to
every member's transport without awaiting. Speaks the subset of the CampusHub protocol the
benchmark uses: `auth` (the same HS256 JWT) → `auth_success`; `join_group` → `ack` (no
membership check, no storage); `send_message` → `ack` with a per-group seq counted in memory,
then `new_message` broadcast to the group's connections (the sender's included); `ping`.

    python bench/baselines/ws_broadcast.py --port 9001 --secret S [--ping-interval 30]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from typing import Any

from jose import jwt
from websockets.asyncio.server import ServerConnection, broadcast, serve

from bench.baselines.protocol import new_message, now_ms, parse_args, reply

SECRET = ""
groups: dict[str, set[ServerConnection]] = {}


def frame(type: str, message_id: str | None, data: dict[str, Any]) -> str:
    return json.dumps(reply(type, message_id, data))


async def handler(ws: ServerConnection) -> None:
    user: str | None = None
    name = ""
    joined: set[str] = set()
    try:
        async for raw in ws:
            try:
                msg = json.loads(raw)
                kind = msg["type"]
                mid = msg.get("message_id")
                data = msg.get("data") or {}
            except (ValueError, KeyError, TypeError):
                await ws.send(frame("error", None, {"code": 400, "message": "malformed"}))
                continue
            if kind == "ping":
                await ws.send(frame("pong", mid, {"server_time": now_ms()}))
            elif kind == "auth":
                try:
                    claims = jwt.decode(data.get("token"), SECRET, algorithms=["HS256"])
                except Exception:
                    await ws.send(frame("auth_failed", mid, {"code": 401, "message": "invalid"}))
                    continue
                user = str(claims["sub"])
                name = str(claims.get("name") or user)
                await ws.send(
                    frame(
                        "auth_success",
                        mid,
                        {"user_id": user, "groups": [], "expires_at": claims["exp"] * 1000},
                    )
                )
            elif user is None:
                await ws.send(frame("error", mid, {"code": 401, "message": "authenticate first"}))
            elif kind == "join_group":
                group = str(data["group_id"])
                groups.setdefault(group, set()).add(ws)
                joined.add(group)
                await ws.send(frame("ack", mid, {"group_id": group, "success": True}))
            elif kind == "send_message":
                group = str(data.get("group_id"))
                if group not in joined:
                    await ws.send(frame("error", mid, {"code": 403, "message": "not a member"}))
                    continue
                ack, push = new_message(group, user, name, data)
                await ws.send(frame("ack", mid, ack))
                broadcast(groups[group], json.dumps(push))
            else:
                await ws.send(frame("error", mid, {"code": 400, "message": "unsupported"}))
    except Exception:
        pass
    finally:
        for group in joined:
            members = groups.get(group)
            if members is not None:
                members.discard(ws)
                if not members:
                    del groups[group]


async def main(args: argparse.Namespace) -> None:
    global SECRET
    SECRET = args.secret
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set_result, None)
    async with serve(
        handler,
        args.host,
        args.port,
        compression=None,
        max_size=1 << 20,
        ping_interval=args.ping_interval,
        ping_timeout=args.ping_interval * 2,
        backlog=2048,
    ):
        print(f"websockets baseline on {args.host}:{args.port}", flush=True)
        await stop


if __name__ == "__main__":
    args = parse_args(__doc__)
    try:
        import uvloop

        uvloop.run(main(args))
    except ImportError:  # pragma: no cover
        asyncio.run(main(args))
