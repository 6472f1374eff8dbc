"""What the baselines share: the command line, the frames of the benchmark's protocol subset,
and (for the two on uvicorn) the server settings. Each baseline keeps its own library's way
of reading, sending and broadcasting; only the message shapes and the set-up are here."""

from __future__ import annotations

import argparse
import time
import uuid
from typing import Any

SEQS: dict[str, int] = {}  # per-group seq, counted in memory (nothing is stored)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def reply(type: str, message_id: str | None, data: dict[str, Any]) -> dict[str, Any]:
    """A server frame (SPEC §3.1 envelope), not yet encoded."""
    return {"type": type, "message_id": message_id, "timestamp": now_ms(), "data": data}


def new_message(
    group: str, user: str, name: str, data: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A sent message's next seq in its group: (the sender's `ack` data, the `new_message`
    frame for every member), not yet encoded."""
    seq = SEQS[group] = SEQS.get(group, 0) + 1
    created = now_ms()
    message_id = str(uuid.uuid4())
    ack = {
        "message_id": message_id,
        "group_id": group,
        "seq": seq,
        "created_at": created,
        "success": True,
    }
    push = {
        "type": "new_message",
        "message_id": message_id,
        "timestamp": created,
        "data": {
            "message_id": message_id,
            "group_id": group,
            "seq": seq,
            "sender_id": user,
            "sender_name": name,
            "msg_type": data.get("msg_type", 1),
            "content": data.get("content", ""),
            "image_url": data.get("image_url", ""),
            "created_at": created,
        },
    }
    return ack, push


def parse_args(doc: str | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=doc)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--secret", required=True)
    parser.add_argument("--ping-interval", type=float, default=30.0)
    return parser.parse_args()


def run_uvicorn(app: Any, args: argparse.Namespace, **extra: Any) -> None:
    """uvicorn with the service's own settings: uvloop, httptools, the websockets-sansio
    protocol, no compression."""
    import uvicorn

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
        **extra,
    )
