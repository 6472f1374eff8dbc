"""run_connection over a FakeTransport: auth rules, close codes, errors never end the loop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from app.bus.base import BusEvent
from app.bus.memory import InMemoryBus
from app.config import Settings
from app.realtime.handlers import Runtime
from app.realtime.hub import Hub
from app.realtime.presence import MemoryPresence
from app.realtime.ratelimit import TokenBuckets
from app.realtime.runner import run_connection
from app.schemas import events
from app.services import groups
from app.services.context import ServiceContext
from tests.fakes import FakeStore, FakeTransport, message
from tests.support.tokens import SECRET, token

Serve = Callable[[FakeTransport], asyncio.Task[None]]
MEMBERSHIP = {"alice": {"g1": 4}, "bob": {"g1": 4}}


@pytest.fixture
def rt(monkeypatch: pytest.MonkeyPatch) -> Runtime:
    """A runtime whose group lookups come from MEMBERSHIP instead of a database."""

    async def group_seqs(ctx: object, *, user_id: str) -> dict[str, int]:
        return dict(MEMBERSHIP.get(user_id, {}))

    async def is_member(ctx: object, *, user_id: str, group_id: str) -> int | None:
        return MEMBERSHIP.get(user_id, {}).get(group_id)

    monkeypatch.setattr(groups, "group_seqs", group_seqs)
    monkeypatch.setattr(groups, "is_member", is_member)
    settings = Settings(
        JWT_SECRET=SECRET,
        WS_AUTH_TIMEOUT=0.3,
        WS_MAX_MESSAGE_BYTES=2048,
        WS_SEND_QUEUE=16,
        WS_WRITE_TIMEOUT=0.3,
        _env_file=None,
    )
    store = FakeStore()
    ctx = ServiceContext(settings=settings, sessions=None, bus=InMemoryBus())  # type: ignore[arg-type]
    hub = Hub(fetch_after=store.fetch_after, service="test", gap_delay=10)
    return Runtime(ctx=ctx, hub=hub, presence=MemoryPresence(), send_buckets=TokenBuckets(10, 20))


@pytest.fixture
async def serve(rt: Runtime) -> AsyncIterator[Serve]:
    """Start run_connection on transports; at teardown every loop must end by itself."""
    tasks: list[tuple[FakeTransport, asyncio.Task[None]]] = []

    def start(transport: FakeTransport) -> asyncio.Task[None]:
        task = asyncio.create_task(run_connection(transport, rt, remote="10.0.0.9"))
        tasks.append((transport, task))
        return task

    yield start
    for transport, task in tasks:
        transport.disconnect()
        await asyncio.wait_for(task, 2)
    assert rt.hub.connections == set()
    assert rt.hub.by_user == {} and rt.hub.channels == {}


def of(frame: dict[str, Any], type: str, message_id: str) -> bool:
    return frame["type"] == type and frame.get("message_id") == message_id


async def reply(transport: FakeTransport, message_id: str) -> dict[str, Any]:
    return await transport.wait_frame(lambda f: f.get("message_id") == message_id)


async def authed(
    serve: Serve, user: str = "alice", ttl: int = 3600
) -> tuple[FakeTransport, asyncio.Task[None]]:
    transport = FakeTransport()
    task = serve(transport)
    transport.feed_json("auth", {"token": token(user, ttl=ttl)}, message_id="a-1")
    frame = await reply(transport, "a-1")
    assert frame["type"] == "auth_success", frame
    return transport, task


async def test_auth_timeout_closes_with_1008_even_if_the_client_pings(
    serve: Serve, rt: Runtime
) -> None:
    transport = FakeTransport()
    task = serve(transport)
    transport.feed_json("ping", message_id="p-1", timestamp=5)
    pong = await reply(transport, "p-1")
    assert pong["type"] == "pong" and pong["timestamp"] == 5

    assert await transport.wait_closed(timeout=3) == 1008
    await asyncio.wait_for(task, 2)
    assert rt.hub.connections == set()


async def test_an_auth_received_in_time_is_served_even_if_it_outlasts_the_deadline(
    serve: Serve, rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The deadline bounds the wait for the auth frame, not its handling: a group read
    still running at the deadline ends in auth_success, and the connection stays open."""
    release = asyncio.Event()

    async def slow_group_seqs(ctx: object, *, user_id: str) -> dict[str, int]:
        await release.wait()
        return dict(MEMBERSHIP.get(user_id, {}))

    monkeypatch.setattr(groups, "group_seqs", slow_group_seqs)
    transport = FakeTransport()
    serve(transport)
    transport.feed_json("auth", {"token": token("alice")}, message_id="a-1")
    await asyncio.sleep(0.3 + 0.25)  # time passing: WS_AUTH_TIMEOUT and more than the slack
    release.set()
    assert (await reply(transport, "a-1"))["type"] == "auth_success"
    transport.feed_json("ping", message_id="p-1")
    assert (await reply(transport, "p-1"))["type"] == "pong"
    assert transport.close_code is None


async def test_the_auth_deadline_lets_go_of_authenticated_and_closed_connections(
    serve: Serve, rt: Runtime
) -> None:
    """Until its deadline fires, the shared timer must not keep a connection that has
    authenticated or closed (and everything it refers to) alive."""
    from app.realtime.connection import auth_deadlines

    def held() -> list[object]:
        return [entry.conn for _, _, entry in auth_deadlines()._heap if entry.conn is not None]

    transport, _ = await authed(serve)
    (conn,) = rt.hub.connections
    transport.feed_json("ping", message_id="p-1")  # the reader's next turn, after the auth
    await reply(transport, "p-1")
    assert conn not in held()

    leaving = FakeTransport()
    task = serve(leaving)
    leaving.feed_json("ping", message_id="p-2")
    await reply(leaving, "p-2")
    (other,) = rt.hub.connections - {conn}
    assert other in held()  # waiting for its auth
    leaving.disconnect()
    await asyncio.wait_for(task, 2)
    assert held() == []


async def test_many_leaving_at_once_all_clean_up_a_share_per_turn(
    serve: Serve, rt: Runtime
) -> None:
    """150 authenticated peers gone in the same turn: their readers clean up in turns of
    CLEANUPS_PER_TURN, and every one of them ends, unregistered and offline."""
    from app.realtime.handlers import CLEANUPS_PER_TURN

    users = ("alice", "bob")
    peers = [await authed(serve, users[i % 2]) for i in range(150)]
    assert len(rt.hub.connections) == 150
    assert await rt.presence.online(users) == set(users)
    for transport, _ in peers:
        transport.disconnect()
    await asyncio.sleep(0)  # every reader wakes in this turn
    assert len(rt.closing) >= 150 - CLEANUPS_PER_TURN
    await asyncio.wait_for(asyncio.gather(*(task for _, task in peers)), 5)
    await rt.presence_writes.flush()
    assert rt.hub.connections == set() and len(rt.closing) == 0
    assert await rt.presence.online(users) == set()


async def test_binary_frame_closes_with_1003(serve: Serve) -> None:
    transport, task = await authed(serve)
    transport.feed(b"\x00\x01")
    assert await transport.wait_closed() == 1003
    await asyncio.wait_for(task, 2)


async def test_oversize_frame_closes_with_1009(serve: Serve) -> None:
    transport = FakeTransport()
    task = serve(transport)
    transport.feed('{"type":"ping","data":{"x":"' + "a" * 2100 + '"}}')
    assert await transport.wait_closed() == 1009
    await asyncio.wait_for(task, 2)


async def test_size_limit_counts_utf8_bytes_not_characters(serve: Serve) -> None:
    transport = FakeTransport()
    task = serve(transport)
    # 800 characters but 2400 bytes: over the 2048-byte limit.
    transport.feed('{"type":"ping","data":{"x":"' + "€" * 800 + '"}}')
    assert await transport.wait_closed() == 1009
    await asyncio.wait_for(task, 2)


async def test_frame_just_under_the_limit_is_served(serve: Serve) -> None:
    transport = FakeTransport()
    serve(transport)
    transport.feed('{"type":"ping","message_id":"p","data":{"x":"' + "a" * 1900 + '"}}')
    assert (await reply(transport, "p"))["type"] == "pong"


async def test_three_failed_auths_close_with_1008_after_the_replies(
    serve: Serve, rt: Runtime
) -> None:
    transport = FakeTransport()
    task = serve(transport)
    bad = [{"token": "not-a-jwt"}, {"token": token("alice", ttl=-10)}, {}]
    for i, data in enumerate(bad):
        transport.feed_json("auth", data, message_id=f"a-{i}")

    assert await transport.wait_closed() == 1008
    await asyncio.wait_for(task, 2)
    failed = transport.of_type("auth_failed")
    assert [f["message_id"] for f in failed] == ["a-0", "a-1", "a-2"]
    assert all(f["data"]["code"] == 401 and f["data"]["message"] for f in failed)
    assert "expired" in failed[1]["data"]["message"]


async def test_two_failed_auths_then_success_stays_open(serve: Serve) -> None:
    transport = FakeTransport()
    serve(transport)
    transport.feed_json("auth", {"token": "junk"}, message_id="a-0")
    transport.feed_json("auth", {"token": "junk"}, message_id="a-1")
    transport.feed_json("auth", {"token": token("alice")}, message_id="a-2")
    transport.feed_json("ping", message_id="p")
    assert (await reply(transport, "a-2"))["type"] == "auth_success"
    assert (await reply(transport, "p"))["type"] == "pong"
    assert transport.close_code is None


async def test_token_expiry_closes_with_4001(serve: Serve) -> None:
    transport, task = await authed(serve, ttl=1)
    assert await transport.wait_closed(timeout=3) == 4001
    await asyncio.wait_for(task, 2)


async def test_second_auth_refreshes_the_expiry(serve: Serve, rt: Runtime) -> None:
    transport, _ = await authed(serve, ttl=1)
    transport.feed_json("auth", {"token": token("alice", ttl=3600)}, message_id="a-2")
    refreshed = await reply(transport, "a-2")
    assert refreshed["type"] == "auth_success" and refreshed["data"]["user_id"] == "alice"
    (conn,) = rt.hub.connections
    assert conn.expires_at * 1000 == refreshed["data"]["expires_at"]

    # Past the first token's expiry, the connection is still open and served.
    with pytest.raises(TimeoutError):
        await transport.wait_closed(timeout=1.3)
    transport.feed_json("ping", message_id="p")
    assert (await reply(transport, "p"))["type"] == "pong"


async def test_second_auth_for_another_user_is_400_and_changes_nothing(
    serve: Serve, rt: Runtime
) -> None:
    transport, _ = await authed(serve, "alice")
    transport.feed_json("auth", {"token": token("bob")}, message_id="a-2")
    error = await reply(transport, "a-2")
    assert error["type"] == "error" and error["data"]["code"] == 400

    (conn,) = rt.hub.connections
    assert conn.user_id == "alice" and set(rt.hub.by_user) == {"alice"}
    assert conn.groups == {"g1"}
    rt.hub.deliver(_message_event(5))
    frame = await transport.wait_frame(lambda f: f["type"] == "new_message")
    assert frame["data"]["seq"] == 5
    assert transport.close_code is None


async def test_before_auth_well_formed_frames_get_401_and_malformed_400(serve: Serve) -> None:
    transport = FakeTransport()
    serve(transport)
    transport.feed_json("send_message", {"group_id": "g1", "content": "x"}, message_id="s")
    transport.feed_json("join_group", {"group_id": "g1"}, message_id="j")
    transport.feed_json("sync", message_id="y")
    transport.feed('{"type": "sync", "message_id": "m", "data": "nope"}')
    transport.feed("][")
    transport.feed_json("ping", message_id="p")

    assert (await reply(transport, "p"))["type"] == "pong"
    codes = {f.get("message_id"): f["data"]["code"] for f in transport.of_type("error")}
    assert codes == {"s": 401, "j": 401, "y": 401, "m": 400, None: 400}


async def test_auth_success_lists_groups_and_resume_replays(serve: Serve, rt: Runtime) -> None:
    store = FakeStore()
    for seq in range(1, 5):
        store.add("g1", seq)
    rt.hub.fetch_after = store.fetch_after
    transport = FakeTransport()
    serve(transport)
    transport.feed_json("auth", {"token": token("alice"), "resume": {"g1": 2}}, message_id="a")
    ok = await reply(transport, "a")
    assert ok["data"]["user_id"] == "alice" and ok["data"]["groups"] == ["g1"]
    frames = await transport.wait_frames(3)
    assert [f["data"]["seq"] for f in frames if f["type"] == "new_message"] == [3, 4]
    rt.hub.deliver(_message_event(4))  # duplicate of the replay's end
    rt.hub.deliver(_message_event(5))
    await transport.wait_frame(lambda f: f["type"] == "new_message" and f["data"]["seq"] == 5)
    assert [f["data"]["seq"] for f in transport.of_type("new_message")] == [3, 4, 5]


async def test_resume_covers_messages_delivered_while_auth_was_loading(
    serve: Serve, rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Live frames the channel delivered during the membership query are replayed too."""
    store = FakeStore()
    for seq in range(1, 5):
        store.add("g1", seq)
    rt.hub.fetch_after = store.fetch_after
    bob, _ = await authed(serve, "bob")
    loading, release = asyncio.Event(), asyncio.Event()
    real_group_seqs = groups.group_seqs

    async def slow_group_seqs(ctx: ServiceContext, *, user_id: str) -> dict[str, int]:
        seqs = await real_group_seqs(ctx, user_id=user_id)  # the snapshot: g1 at seq 4
        loading.set()
        await release.wait()
        return seqs

    monkeypatch.setattr(groups, "group_seqs", slow_group_seqs)
    transport = FakeTransport()
    serve(transport)
    transport.feed_json("auth", {"token": token("alice"), "resume": {"g1": 4}}, message_id="a")
    async with asyncio.timeout(2):
        await loading.wait()
    store.add("g1", 5)
    rt.hub.deliver(_message_event(5))  # reaches bob, before alice's connection subscribed
    await bob.wait_frame(lambda f: f["type"] == "new_message")
    release.set()
    assert (await reply(transport, "a"))["type"] == "auth_success"
    store.add("g1", 6)
    rt.hub.deliver(_message_event(6))

    await transport.wait_until(lambda t: len(t.of_type("new_message")) >= 2)
    assert [f["data"]["seq"] for f in transport.of_type("new_message")] == [5, 6]


async def test_a_peer_that_reads_nothing_is_let_go_after_the_write_timeout(
    serve: Serve, rt: Runtime
) -> None:
    """Overflow closes with 1013, but the close frame cannot go out either: the loop must not
    wait for a peer that never answers, or the slot and presence entry are pinned for good."""
    transport, task = await authed(serve)
    transport.block()
    for seq in range(5, 30):
        rt.hub.deliver(_message_event(seq))
    assert await transport.wait_closed() == 1013
    await asyncio.wait_for(task, 3)
    assert not transport.close_sent
    assert rt.hub.connections == set() and rt.hub.by_user == {}
    await rt.presence_writes.flush()
    assert await rt.presence.online(["alice"]) == set()


async def test_unexpected_handler_failure_is_a_500_and_the_loop_goes_on(
    serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    transport, _ = await authed(serve)

    async def broken(ctx: object, *, user_id: str, group_id: str) -> int | None:
        raise RuntimeError("database exploded")

    monkeypatch.setattr(groups, "is_member", broken)
    transport.feed_json("join_group", {"group_id": "g1"}, message_id="j")
    transport.feed_json("ping", message_id="p")
    error = await reply(transport, "j")
    assert error["type"] == "error" and error["data"]["code"] == 500
    assert "exploded" not in error["data"]["message"]
    assert (await reply(transport, "p"))["type"] == "pong"


async def test_join_and_leave_group_on_one_connection(serve: Serve, rt: Runtime) -> None:
    transport, _ = await authed(serve)
    bob, _ = await authed(serve, "bob")
    transport.feed_json("leave_group", {"group_id": "g1"}, message_id="l")
    assert (await reply(transport, "l"))["data"] == {"group_id": "g1", "success": True}
    rt.hub.deliver(_message_event(5))
    await bob.wait_frame(lambda f: f["type"] == "new_message")
    transport.feed_json("join_group", {"group_id": "nope"}, message_id="j0")
    assert (await reply(transport, "j0"))["data"]["code"] == 403
    transport.feed_json("join_group", {"group_id": "g1"}, message_id="j1")
    joined = await reply(transport, "j1")
    assert joined["type"] == "ack" and joined["data"]["group_id"] == "g1"
    rt.hub.deliver(_message_event(6))
    frame = await transport.wait_frame(lambda f: f["type"] == "new_message")
    assert frame["data"]["seq"] == 6
    assert len(transport.of_type("new_message")) == 1


async def test_peer_disconnect_ends_the_loop_and_presence(serve: Serve, rt: Runtime) -> None:
    transport, task = await authed(serve)
    assert await rt.presence.online(["alice"]) == {"alice"}
    transport.disconnect(1001)
    await asyncio.wait_for(task, 2)
    await rt.presence_writes.flush()
    assert await rt.presence.online(["alice"]) == set()
    assert rt.hub.connections == set()


async def test_a_closed_connection_does_not_wait_for_its_presence_write(
    serve: Serve, rt: Runtime, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The loop ends at once and lets go of what it holds; the write follows beside it, and
    a failed one is logged, not raised."""
    written = asyncio.Event()
    release = asyncio.Event()
    calls: list[tuple[str, tuple[str, ...]]] = []

    async def slow_disconnect(user_id: str, conn_id: str, groups: tuple[str, ...]) -> None:
        calls.append((user_id, groups))
        await release.wait()
        written.set()
        raise ConnectionError("presence store gone")

    monkeypatch.setattr(rt.presence, "disconnect", slow_disconnect)
    transport, task = await authed(serve)
    transport.disconnect(1001)
    await asyncio.wait_for(task, 2)
    assert rt.hub.connections == set()
    assert rt.presence_writes.pending == 1 and not written.is_set()
    release.set()
    with caplog.at_level("WARNING", logger="app.presence"):
        await asyncio.wait_for(rt.presence_writes.flush(), 2)
    assert written.is_set() and rt.presence_writes.pending == 0
    assert calls == [("alice", ("g1",))]
    assert "presence update for alice failed" in caplog.text


def _message_event(seq: int) -> BusEvent:
    return BusEvent(events.MESSAGE, message("g1", seq))


async def test_json_pings_refresh_presence_at_most_a_few_times_per_ttl(
    serve: Serve, rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    import app.realtime.handlers as handlers

    beats: list[list[tuple[str, str]]] = []

    async def heartbeat(entries: Any) -> None:
        beats.append(list(entries))

    monkeypatch.setattr(rt.presence, "heartbeat", heartbeat)
    now = [1000.0]
    monkeypatch.setattr(handlers, "clock", lambda: now[0])
    transport, _ = await authed(serve)
    for i in range(5):
        transport.feed_json("ping", message_id=f"p-{i}")
        assert (await reply(transport, f"p-{i}"))["type"] == "pong"
    assert beats == [], "auth just wrote presence; pings within TTL/3 add no writes"
    conn = next(iter(rt.hub.connections))
    now[0] += rt.settings.PRESENCE_TTL / 3
    transport.feed_json("ping", message_id="p-late")
    await reply(transport, "p-late")
    assert beats == [[("alice", conn.id)]]


async def test_a_departure_waits_for_the_heartbeat_in_flight(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The heartbeat snapshots the connections, then writes; a connection that closes in
    between must be removed after that write, or the write brings it back until the TTL."""
    order: list[object] = []
    release = asyncio.Event()

    async def heartbeat(entries: list[tuple[str, str]]) -> None:
        order.append(("heartbeat", list(entries)))
        await release.wait()
        order.append("heartbeat written")

    async def disconnect(user_id: str, conn_id: str, groups: tuple[str, ...]) -> None:
        order.append(("offline", user_id, conn_id))

    monkeypatch.setattr(rt.presence, "heartbeat", heartbeat)
    monkeypatch.setattr(rt.presence, "disconnect", disconnect)
    beat = asyncio.create_task(rt.presence_writes.heartbeat([("alice", "c1")]))
    while not order:  # the heartbeat's write is under way
        await asyncio.sleep(0)
    rt.presence_writes.disconnect("alice", "c1", ())
    for _ in range(10):
        await asyncio.sleep(0)
    assert order == [("heartbeat", [("alice", "c1")])] and rt.presence_writes.pending == 1
    release.set()
    await asyncio.wait_for(beat, 1)
    await asyncio.wait_for(rt.presence_writes.flush(), 1)
    assert order == [
        ("heartbeat", [("alice", "c1")]),
        "heartbeat written",
        ("offline", "alice", "c1"),
    ]


async def test_a_failed_heartbeat_does_not_hold_departures(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def heartbeat(entries: list[tuple[str, str]]) -> None:
        raise ConnectionError("presence store gone")

    monkeypatch.setattr(rt.presence, "heartbeat", heartbeat)
    await rt.presence.connect("alice", "c1", ())
    with pytest.raises(ConnectionError):
        await rt.presence_writes.heartbeat([("alice", "c1")])
    rt.presence_writes.disconnect("alice", "c1", ())
    await asyncio.wait_for(rt.presence_writes.flush(), 1)
    assert await rt.presence.online(["alice"]) == set()
