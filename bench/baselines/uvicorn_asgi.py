"""Opt-in baseline (`--targets …,uvicorn-asgi`): a bare ASGI app under uvicorn, no framework.

It tells uvicorn's own cost from a framework's or the service's: the same protocol subset
as ws_broadcast.py and fastapi_manager.py (auth with the same HS256 JWT, join_group,
send_message → ack + new_message with an in-memory per-group seq, ping), spoken through
raw ASGI messages, with one `await send({"type": "websocket.send", …})` per recipient and
the frame encoded once per message. uvicorn runs with the service's own settings (uvloop,
httptools, the websockets-sansio protocol, no compression). Stores nothing.

    python bench/baselines/uvicorn_asgi.py --port 9003 --secret S [--ping-interval 30]
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from jose import jwt

from bench.baselines.protocol import new_message, now_ms, parse_args, reply, run_uvicorn

Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]

SECRET = ""
GROUPS: dict[str, list[Send]] = {}


def frame(type: str, message_id: str | None, data: dict[str, Any]) -> dict[str, Any]:
    return {"type": "websocket.send", "text": json.dumps(reply(type, message_id, data))}


async def lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    if scope["type"] == "http":  # readiness probe of the bench
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
        return
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    user: str | None = None
    name = ""
    joined: set[str] = set()
    try:
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            try:
                msg = json.loads(message.get("text") or "")
                kind = msg["type"]
                mid = msg.get("message_id")
                data = msg.get("data") or {}
            except (ValueError, KeyError, TypeError):
                await send(frame("error", None, {"code": 400, "message": "malformed"}))
                continue
            if kind == "ping":
                await send(frame("pong", mid, {"server_time": now_ms()}))
            elif kind == "auth":
                try:
                    claims = jwt.decode(data.get("token"), SECRET, algorithms=["HS256"])
                except Exception:
                    await send(frame("auth_failed", mid, {"code": 401, "message": "invalid"}))
                    continue
                user = str(claims["sub"])
                name = str(claims.get("name") or user)
                await send(
                    frame(
                        "auth_success",
                        mid,
                        {"user_id": user, "groups": [], "expires_at": claims["exp"] * 1000},
                    )
                )
            elif user is None:
                await send(frame("error", mid, {"code": 401, "message": "authenticate first"}))
            elif kind == "join_group":
                group = str(data["group_id"])
                if group not in joined:
                    GROUPS.setdefault(group, []).append(send)
                    joined.add(group)
                await send(frame("ack", mid, {"group_id": group, "success": True}))
            elif kind == "send_message":
                group = str(data.get("group_id"))
                if group not in joined:
                    await send(frame("error", mid, {"code": 403, "message": "not a member"}))
                    continue
                ack, body = new_message(group, user, name, data)
                await send(frame("ack", mid, ack))
                pushed = {"type": "websocket.send", "text": json.dumps(body)}
                for member in list(GROUPS.get(group, [])):
                    try:
                        await member(pushed)
                    except Exception:  # that member is gone; its own loop cleans up
                        pass
            else:
                await send(frame("error", mid, {"code": 400, "message": "unsupported"}))
    finally:
        for group in joined:
            members = GROUPS.get(group, [])
            if send in members:
                members.remove(send)


if __name__ == "__main__":
    args = parse_args(__doc__)
    SECRET = args.secret
    run_uvicorn(app, args, lifespan="on")
