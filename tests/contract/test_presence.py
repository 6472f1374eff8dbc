"""Redis presence on the real Redis: the connect/disconnect scripts and their outage path."""

from __future__ import annotations

import socket
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as redis

from app.realtime.redis_presence import RedisPresence, group_key, user_key

pytestmark = pytest.mark.redis


@pytest.fixture
async def presence(redis_url: str) -> AsyncIterator[RedisPresence]:
    instance = RedisPresence(redis_url, ttl=60)
    yield instance
    await instance.close()


async def test_connect_and_disconnect_write_every_index(
    presence: RedisPresence, redis_url: str
) -> None:
    user, group = f"u-{uuid.uuid4().hex[:6]}", f"g-{uuid.uuid4().hex[:6]}"
    direct = redis.from_url(redis_url)
    try:
        await presence.connect(user, "c1", [group])
        await presence.connect(user, "c2", [group])  # a second device
        assert await presence.online([user, "nobody"]) == {user}
        assert await direct.sismember(group_key(group), user)
        assert 0 < await direct.ttl(user_key(user)) <= 60
        await presence.disconnect(user, "c1", [group])
        assert await presence.online([user]) == {user}  # c2 is still there
        await presence.disconnect(user, "c2", [group])
        assert await presence.online([user]) == set()
        assert not await direct.sismember(group_key(group), user)
        assert not await direct.sismember("online:users", user)
    finally:
        await direct.aclose()


async def test_an_outage_never_fails_a_connect_or_disconnect() -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = RedisPresence(f"redis://127.0.0.1:{port}/0", ttl=60)
    try:
        await down.connect("alice", "c1", ["g"])  # logged, not raised
        await down.disconnect("alice", "c1", ["g"])
        await down.heartbeat([("alice", "c1")])
    finally:
        await down.close()
