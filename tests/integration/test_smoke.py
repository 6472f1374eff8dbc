"""The walk-through of the README on both storage modes."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.support.tokens import bearer


def walkthrough(client: TestClient) -> None:
    created = client.post(
        "/api/v1/groups",
        json={"name": "Chess club", "member_ids": ["bob"]},
        headers=bearer("alice"),
    )
    assert created.status_code == 201, created.text
    group_id = created.json()["group_id"]
    sent = client.post(
        f"/api/v1/groups/{group_id}/messages",
        json={"msg_type": 1, "content": "Hi Bob", "client_msg_id": "c-1"},
        headers=bearer("alice"),
    )
    assert sent.status_code == 201 and sent.json()["seq"] == 1
    offline = client.get("/api/v1/messages/offline", headers=bearer("bob")).json()
    assert [m["content"] for m in offline["items"]] == ["Hi Bob"]
    groups = client.get("/api/v1/groups", headers=bearer("bob")).json()["items"]
    assert groups[0]["unread_count"] == 1
    read = client.post(f"/api/v1/groups/{group_id}/read", json={"seq": 1}, headers=bearer("bob"))
    assert read.json() == {"group_id": group_id, "last_read_seq": 1}
    groups = client.get("/api/v1/groups", headers=bearer("bob")).json()["items"]
    assert groups[0]["unread_count"] == 0
    assert client.get("/api/v1/messages/offline", headers=bearer("bob")).json()["items"] == []


def test_walkthrough_embedded(client: TestClient) -> None:
    walkthrough(client)


@pytest.mark.postgres
def test_walkthrough_postgres(pg_client: TestClient) -> None:
    walkthrough(pg_client)
