"""Baseline (b): the FastAPI-docs `ConnectionManager` pattern under uvicorn.

A list of WebSocket objects per group and, per recipient, `await connection.send_text(
json.dumps(...))`, as in FastAPI's "WebSockets → Handling disconnections and multiple
clients" page (here one list per group instead of one global list). Same protocol subset as
ws_broadcast.py: auth (same HS256 JWT), join_group, send_message → ack + new_message with an
in-memory per-group seq, ping. uvicorn runs with the service's own settings (uvloop,
httptools, the websockets-sansio protocol, no compression).

    python bench/baselines/fastapi_manager.py --port 9002 --secret S [--ping-interval 30]
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from jose import jwt

from bench.baselines.protocol import new_message, now_ms, parse_args, reply, run_uvicorn

SECRET = ""
app = FastAPI()


class ConnectionManager:
    def __init__(self) -> None:
        self.groups: dict[str, list[WebSocket]] = {}

    def join(self, group: str, websocket: WebSocket) -> None:
        self.groups.setdefault(group, []).append(websocket)

    def disconnect(self, websocket: WebSocket, joined: set[str]) -> None:
        for group in joined:
            members = self.groups.get(group, [])
            if websocket in members:
                members.remove(websocket)

    async def send_personal_message(self, message: dict[str, Any], websocket: WebSocket) -> None:
        await websocket.send_text(json.dumps(message))

    async def broadcast(self, group: str, message: dict[str, Any]) -> None:
        for connection in self.groups.get(group, []):
            await connection.send_text(json.dumps(message))


manager = ConnectionManager()


@app.websocket("/ws")
async def websocket_endpoint(websocket: WebSocket) -> None:
    await websocket.accept()
    user: str | None = None
    name = ""
    joined: set[str] = set()
    try:
        while True:
            raw = await websocket.receive_text()
            try:
                msg = json.loads(raw)
                kind = msg["type"]
                mid = msg.get("message_id")
                data = msg.get("data") or {}
            except (ValueError, KeyError, TypeError):
                await manager.send_personal_message(
                    reply("error", None, {"code": 400, "message": "malformed"}), websocket
                )
                continue
            if kind == "ping":
                await manager.send_personal_message(
                    reply("pong", mid, {"server_time": now_ms()}), websocket
                )
            elif kind == "auth":
                try:
                    claims = jwt.decode(data.get("token"), SECRET, algorithms=["HS256"])
                except Exception:
                    await manager.send_personal_message(
                        reply("auth_failed", mid, {"code": 401, "message": "invalid"}), websocket
                    )
                    continue
                user = str(claims["sub"])
                name = str(claims.get("name") or user)
                await manager.send_personal_message(
                    reply(
                        "auth_success",
                        mid,
                        {"user_id": user, "groups": [], "expires_at": claims["exp"] * 1000},
                    ),
                    websocket,
                )
            elif user is None:
                await manager.send_personal_message(
                    reply("error", mid, {"code": 401, "message": "authenticate first"}), websocket
                )
            elif kind == "join_group":
                group = str(data["group_id"])
                if group not in joined:
                    manager.join(group, websocket)
                    joined.add(group)
                await manager.send_personal_message(
                    reply("ack", mid, {"group_id": group, "success": True}), websocket
                )
            elif kind == "send_message":
                group = str(data.get("group_id"))
                if group not in joined:
                    await manager.send_personal_message(
                        reply("error", mid, {"code": 403, "message": "not a member"}), websocket
                    )
                    continue
                ack, push = new_message(group, user, name, data)
                await manager.send_personal_message(reply("ack", mid, ack), websocket)
                await manager.broadcast(group, push)
            else:
                await manager.send_personal_message(
                    reply("error", mid, {"code": 400, "message": "unsupported"}), websocket
                )
    except WebSocketDisconnect:
        manager.disconnect(websocket, joined)
    except Exception:
        manager.disconnect(websocket, joined)


if __name__ == "__main__":
    args = parse_args(__doc__)
    SECRET = args.secret
    run_uvicorn(app, args)
