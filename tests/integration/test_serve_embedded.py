"""A real `python -m app serve` in embedded mode, driven like the README's curl walk-through."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx

from app.config import Settings
from tests.support.server import ServerProcess
from tests.support.tokens import SECRET

ROOT = Path(__file__).resolve().parents[2]


def start_minting(*users: str) -> dict[str, subprocess.Popen[str]]:
    """`python -m app token USER --name Name` for each user, as the README does, in parallel."""
    env = {k: v for k, v in os.environ.items() if k not in Settings.model_fields}
    env["JWT_SECRET"] = SECRET
    return {
        user: subprocess.Popen(
            [sys.executable, "-m", "app", "token", user, "--name", user.title()],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for user in users
    }


def collect(procs: dict[str, subprocess.Popen[str]]) -> dict[str, str]:
    tokens = {}
    for user, proc in procs.items():
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        tokens[user] = out.strip()
    return tokens


def test_readme_walkthrough_against_a_real_server(
    server_factory: Callable[..., ServerProcess],
) -> None:
    minting = start_minting("alice", "bob")  # while the server starts
    server = server_factory()
    tokens = collect(minting)
    alice = {"Authorization": f"Bearer {tokens['alice']}"}
    bob = {"Authorization": f"Bearer {tokens['bob']}"}
    with httpx.Client(base_url=f"{server.base_url}/api/v1", timeout=10) as http:
        created = http.post(
            "/groups", json={"name": "Chess club", "member_ids": ["bob"]}, headers=alice
        )
        assert created.status_code == 201, created.text
        group_id = created.json()["group_id"]

        body = {"msg_type": 1, "content": "Hi Bob!", "client_msg_id": "c-1"}
        sent = http.post(f"/groups/{group_id}/messages", json=body, headers=alice)
        assert sent.status_code == 201, sent.text
        assert sent.json()["seq"] == 1 and sent.json()["success"] is True
        retry = http.post(f"/groups/{group_id}/messages", json=body, headers=alice)
        assert retry.status_code == 200
        assert retry.json()["message_id"] == sent.json()["message_id"]

        offline = http.get("/messages/offline", headers=bob).json()
        assert [(m["content"], m["sender_name"], m["seq"]) for m in offline["items"]] == [
            ("Hi Bob!", "Alice", 1)
        ]
        assert offline["next_cursor"] is None

        [group] = http.get("/groups", headers=bob).json()["items"]
        assert (group["group_id"], group["unread_count"], group["last_seq"]) == (group_id, 1, 1)

        read = http.post(f"/groups/{group_id}/read", json={"seq": 1}, headers=bob)
        assert read.json() == {"group_id": group_id, "last_read_seq": 1}

        [group] = http.get("/groups", headers=bob).json()["items"]
        assert (group["unread_count"], group["last_read_seq"]) == (0, 1)
        assert http.get("/messages/offline", headers=bob).json()["items"] == []
        assert http.get("/groups", headers={"Authorization": "Bearer nope"}).status_code == 401

    with httpx.Client(base_url=server.base_url, timeout=10) as http:
        assert http.get("/health").json() == {"status": "ok"}
        ready = http.get("/ready")
        assert ready.status_code == 200 and ready.json()["checks"]["database"] is True
        assert http.get("/docs").status_code == 200
        assert "/api/v1/messages/offline" in http.get("/openapi.json").json()["paths"]
    # Embedded mode wrote its SQLite file where SQLITE_PATH pointed.
    assert Path(server.env["SQLITE_PATH"]).is_file()
