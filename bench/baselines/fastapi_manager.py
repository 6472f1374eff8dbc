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

import argparse
import json
import time
import uuid
from typing import Any

import uvicorn
from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from jose import jwt

SECRET = ""
app = FastAPI()


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class ConnectionManager:
    def __init__(self) -> None:
        self.groups: dict[str, list[WebSocket]] = {}
        self.seqs: dict[str, int] = {}

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


def reply(type: str, message_id: str | None, data: dict[str, Any]) -> dict[str, Any]:
    return {"type": type, "message_id": message_id, "timestamp": now_ms(), "data": data}


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
                seq = manager.seqs[group] = manager.seqs.get(group, 0) + 1
                created = now_ms()
                message_id = str(uuid.uuid4())
                body = {
                    "message_id": message_id,
                    "group_id": group,
                    "seq": seq,
                    "sender_id": user,
                    "sender_name": name,
                    "msg_type": data.get("msg_type", 1),
                    "content": data.get("content", ""),
                    "image_url": data.get("image_url", ""),
                    "created_at": created,
                }
                ack = {
                    "message_id": message_id,
                    "group_id": group,
                    "seq": seq,
                    "created_at": created,
                    "success": True,
                }
                await manager.send_personal_message(reply("ack", mid, ack), websocket)
                await manager.broadcast(
                    group,
                    {
                        "type": "new_message",
                        "message_id": message_id,
                        "timestamp": created,
                        "data": body,
                    },
                )
            else:
                await manager.send_personal_message(
                    reply("error", mid, {"code": 400, "message": "unsupported"}), websocket
                )
    except WebSocketDisconnect:
        manager.disconnect(websocket, joined)
    except Exception:
        manager.disconnect(websocket, joined)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--secret", required=True)
    parser.add_argument("--ping-interval", type=float, default=30.0)
    args = parser.parse_args()
    SECRET = args.secret
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        ws="websockets-sansio",
        ws_ping_interval=args.ping_interval,
        ws_ping_timeout=args.ping_interval * 2,
        ws_per_message_deflate=False,
        loop="auto",
        http="auto",
        log_level="warning",
        access_log=False,
    )
