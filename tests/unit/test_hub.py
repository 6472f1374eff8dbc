"""Hub: registry, in-order fan-out with gap filling, replay joined to the live stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from app.bus.base import BusEvent
from app.realtime.connection import Connection, ConnState
from app.realtime.hub import Hub
from app.schemas import events
from tests.fakes import DirectFake, FakeStore, FakeTransport, message, parse_frames

G = "g1"


def make_hub(store: FakeStore | None = None, *, gap_delay: float = 10.0) -> Hub:
    store = store or FakeStore()
    return Hub(fetch_after=store.fetch_after, service="test", gap_delay=gap_delay)


def make_conn(
    transport: FakeTransport | None = None,
    *,
    user: str = "alice",
    limit: int = 64,
    write_timeout: float = 5.0,
    start: bool = True,
) -> Connection:
    conn = Connection(transport or FakeTransport(), queue_limit=limit, write_timeout=write_timeout)
    conn.user_id = user
    conn.state = ConnState.AUTHENTICATED
    if start:
        conn.start_writer()
    return conn


def join(hub: Hub, conn: Connection, group_id: str = G, *, last_seq: int = 2) -> None:
    hub.attach_user(conn)
    hub.subscribe(conn, group_id, last_seq=last_seq, floor=last_seq)


def msg_event(seq: int, group_id: str = G, **fields: object) -> BusEvent:
    return BusEvent(events.MESSAGE, message(group_id, seq, **fields))


async def held_replay(
    store: FakeStore,
    transport: FakeTransport,
    *,
    last_seq: int,
    limit: int,
    queue_limit: int = 64,
) -> tuple[Hub, Connection, asyncio.Task[tuple[int, bool]]]:
    """A connection resuming from seq 0 while the group is at `last_seq`: live frames are
    held, and the replay's query has read and waits at the store's gate."""
    store.gate = asyncio.Event()
    hub = make_hub(store)
    conn = make_conn(transport, limit=queue_limit)
    hub.attach_user(conn)
    hub.subscribe(conn, G, last_seq=last_seq, floor=0)
    hub.hold(conn, G)
    replay = asyncio.create_task(hub.replay(conn, G, after_seq=0, limit=limit))
    async with asyncio.timeout(2):
        await store.fetched.wait()
    return hub, conn, replay


def seqs(transport: FakeTransport) -> list[int]:
    return [f["data"]["seq"] for f in transport.of_type("new_message")]


async def test_out_of_order_events_are_delivered_once_in_seq_order() -> None:
    store = FakeStore()
    hub = make_hub(store)
    transport = FakeTransport()
    conn = make_conn(transport)
    join(hub, conn, last_seq=2)

    for seq in (5, 3, 4):
        hub.deliver(msg_event(seq))

    await transport.wait_sent(3)
    assert seqs(transport) == [3, 4, 5]
    channel = hub.channels[G]
    assert channel.expected == 6 and not channel.pending
    assert channel.timer is None, "the gap closed by live events must disarm the gap timer"
    assert store.calls == [], "no database read when the live stream fills its own gap"


async def test_gap_is_filled_from_storage_after_the_gap_delay() -> None:
    store = FakeStore()
    store.add(G, 3)
    store.add(G, 4)
    hub = make_hub(store, gap_delay=0.01)
    transport = FakeTransport()
    join(hub, make_conn(transport), last_seq=2)

    hub.deliver(msg_event(5))
    assert transport.sent == []

    await transport.wait_sent(3)
    assert seqs(transport) == [3, 4, 5]
    assert store.calls == [(G, 2, 2)]
    assert hub.channels[G].expected == 6


async def test_gap_fill_races_with_the_live_stream_without_duplicates() -> None:
    store = FakeStore()
    store.gate = asyncio.Event()
    store.add(G, 3)
    store.add(G, 4)
    hub = make_hub(store, gap_delay=0.01)
    transport = FakeTransport()
    join(hub, make_conn(transport), last_seq=2)

    hub.deliver(msg_event(5))
    async with asyncio.timeout(2):
        await store.fetched.wait()
    # The missing seqs arrive live while the database query is in flight.
    hub.deliver(msg_event(3))
    hub.deliver(msg_event(4))
    await transport.wait_sent(3)
    store.gate.set()
    hub.deliver(msg_event(6))

    await transport.wait_sent(4)
    assert seqs(transport) == [3, 4, 5, 6]
    await asyncio.wait_for(asyncio.gather(*hub.tasks), 2)
    assert seqs(transport) == [3, 4, 5, 6]


async def test_gap_missing_from_storage_is_skipped() -> None:
    store = FakeStore()
    hub = make_hub(store, gap_delay=0.01)
    transport = FakeTransport()
    join(hub, make_conn(transport), last_seq=2)

    hub.deliver(msg_event(5))
    await transport.wait_sent(1)
    assert seqs(transport) == [5]
    hub.deliver(msg_event(6))
    await transport.wait_sent(2)
    assert seqs(transport) == [5, 6]


async def test_duplicate_events_are_dropped() -> None:
    hub = make_hub()
    transport = FakeTransport()
    join(hub, make_conn(transport), last_seq=2)

    for seq in (3, 3, 5, 4, 5, 3, 4, 6):
        hub.deliver(msg_event(seq))

    await transport.wait_sent(4)
    assert seqs(transport) == [3, 4, 5, 6]


async def test_frame_is_encoded_once_and_shared_by_every_connection() -> None:
    hub = make_hub()
    conns = [make_conn(user=f"u{i}", start=False) for i in range(3)]
    for conn in conns:
        join(hub, conn)

    hub.deliver(msg_event(3))

    frames = [conn.queue[0] for conn in conns]
    assert all(frame is frames[0] for frame in frames)


async def test_overflow_closes_the_slow_connection_only() -> None:
    hub = make_hub()
    slow_transport = FakeTransport(blocked=True)
    slow = make_conn(slow_transport, user="slow", limit=4)
    fast_transport = FakeTransport()
    fast = make_conn(fast_transport, user="fast", limit=4)
    join(hub, slow)
    join(hub, fast)

    for seq in range(3, 13):
        hub.deliver(msg_event(seq))
        await asyncio.sleep(0)  # one loop turn per bus event, as the consumer gives

    assert await slow_transport.wait_closed() == 1013
    assert slow.close_code == 1013 and not slow.is_open
    await fast_transport.wait_sent(10)
    for seq in range(13, 16):
        hub.deliver(msg_event(seq))
    await fast_transport.wait_sent(13)
    assert seqs(fast_transport) == list(range(3, 16))
    assert fast.is_open and fast_transport.close_code is None
    assert slow_transport.sent == []


class BacklogBus:
    """A bus whose stream already holds a backlog: every entry is ready at once, as after a
    pause or in one batch of stream entries."""

    def __init__(self, backlog: list[BusEvent]) -> None:
        self.backlog = backlog
        self.drained = asyncio.Event()

    def subscribe(self, stream: str) -> AsyncIterator[BusEvent]:
        return self._entries()

    async def _entries(self) -> AsyncIterator[BusEvent]:
        for event in self.backlog:
            yield event
        self.drained.set()
        await asyncio.Event().wait()


async def test_a_burst_of_bus_events_does_not_trip_a_fast_consumer() -> None:
    """The consumer gives writers a turn per event, so a fast client keeps up with a burst."""
    hub = make_hub()
    transport = FakeTransport()
    conn = make_conn(transport, limit=8)
    join(hub, conn)
    bus = BacklogBus([msg_event(seq) for seq in range(3, 53)])
    runner = asyncio.create_task(hub.run(bus, ["messages"]))  # type: ignore[arg-type]
    try:
        await transport.wait_until(lambda t: len(t.sent) >= 50 or t.closed.is_set())
        assert transport.close_code is None, "a fast consumer was closed as a slow one"
        assert seqs(transport) == list(range(3, 53))
        assert conn.is_open
    finally:
        runner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await runner


async def test_replay_holds_live_frames_and_drops_duplicates_at_the_boundary() -> None:
    store = FakeStore()
    for seq in (1, 2):
        store.add(G, seq)
    transport = FakeTransport()
    # As on auth with resume {G: 0} while the group was at seq 2.
    hub, conn, replay = await held_replay(store, transport, last_seq=2, limit=10)
    # Messages 3 and 4 are committed before the query reads; 5 only after.
    store.add(G, 3)
    store.add(G, 4)
    for seq in (3, 4, 5):
        hub.deliver(msg_event(seq))
    assert transport.sent == [], "live frames are held while the replay is loading"
    store.gate.set()

    assert await asyncio.wait_for(replay, 2) == (4, False)
    hub.deliver(msg_event(6))
    await transport.wait_sent(6)
    assert seqs(transport) == [1, 2, 3, 4, 5, 6]
    assert not conn.holds and G not in conn.floors


async def test_replay_reports_has_more_beyond_the_limit() -> None:
    store = FakeStore()
    for seq in range(1, 8):
        store.add(G, seq)
    hub = make_hub(store)
    transport = FakeTransport()
    conn = make_conn(transport)
    join(hub, conn, last_seq=7)

    assert await hub.replay(conn, G, after_seq=2, limit=3) == (5, True)
    assert await hub.replay(conn, G, after_seq=5, limit=3) == (7, False)
    await transport.wait_sent(5)
    assert seqs(transport) == [3, 4, 5, 6, 7]


async def test_replay_larger_than_the_send_queue_with_live_traffic_keeps_the_connection() -> None:
    """SPEC §11: a replay never trips the slow-consumer limit, even with live frames held."""
    store = FakeStore()
    for seq in range(1, 21):
        store.add(G, seq)
    transport = FakeTransport(blocked=True)  # the client reads slowly during the replay
    hub, conn, replay = await held_replay(store, transport, last_seq=20, limit=50, queue_limit=4)
    store.add(G, 21)
    hub.deliver(msg_event(21))
    store.gate.set()
    await asyncio.wait_for(replay, 2)
    for seq in (22, 23):
        hub.deliver(msg_event(seq))

    assert conn.is_open, "replayed frames must not count against the live send queue"
    transport.unblock()
    await transport.wait_sent(23)
    assert seqs(transport) == list(range(1, 24))
    assert transport.close_code is None


async def test_membership_events_subscribe_and_unsubscribe_the_users_connections() -> None:
    hub = make_hub()
    phone_t, laptop_t, other_t = FakeTransport(), FakeTransport(), FakeTransport()
    phone, laptop = make_conn(phone_t, user="bob"), make_conn(laptop_t, user="bob")
    other = make_conn(other_t, user="carol")
    for conn in (phone, laptop, other):
        hub.attach_user(conn)
    hub.subscribe(other, G, last_seq=7, floor=7)

    added = {"group_id": G, "user_id": "bob", "added": True, "last_seq": 7}
    hub.deliver(BusEvent(events.MEMBERSHIP, added))
    assert G in phone.groups and G in laptop.groups
    hub.deliver(msg_event(7))  # already stored before bob joined: not his
    hub.deliver(msg_event(8))
    await phone_t.wait_sent(1)
    await laptop_t.wait_sent(1)
    assert seqs(phone_t) == seqs(laptop_t) == [8]

    hub.deliver(BusEvent(events.MEMBERSHIP, {**added, "added": False, "last_seq": 8}))
    assert G not in phone.groups and G not in laptop.groups
    hub.deliver(msg_event(9))
    await other_t.wait_sent(2)
    assert seqs(other_t) == [8, 9]
    assert seqs(phone_t) == seqs(laptop_t) == [8]
    assert hub.channels[G].members == {other}


async def test_read_update_goes_to_the_users_other_connections_only() -> None:
    hub = make_hub()
    first_t, second_t, stranger_t = FakeTransport(), FakeTransport(), FakeTransport()
    first, second = make_conn(first_t, user="bob"), make_conn(second_t, user="bob")
    stranger = make_conn(stranger_t, user="carol")
    for conn in (first, second, stranger):
        hub.attach_user(conn)

    data = {"user_id": "bob", "group_id": G, "last_read_seq": 4, "origin": first.id}
    hub.deliver(BusEvent(events.READ, data))
    # A notification for bob afterwards: once it arrived, the read update would have too.
    note = {
        "user_id": "bob",
        "notification_id": "n1",
        "type": "system",
        "title": "t",
        "content": "c",
        "created_at": 1,
    }
    hub.deliver(BusEvent(events.NOTIFICATION, note))

    frames = await second_t.wait_frames(2)
    assert [f["type"] for f in frames] == ["read_update", "notification"]
    assert frames[0]["data"] == {"group_id": G, "last_read_seq": 4}
    first_frames = await first_t.wait_frames(1)
    assert [f["type"] for f in first_frames] == ["notification"]
    assert first_frames[0]["data"] == {k: v for k, v in note.items() if k != "user_id"}
    assert first_frames[0]["message_id"] == "n1" and first_frames[0]["timestamp"] == 1
    assert stranger_t.sent == []


async def test_register_cleans_up_when_the_body_raises() -> None:
    hub = make_hub()
    conn = make_conn(user="bob")

    with pytest.raises(RuntimeError):
        async with hub.register(conn):
            hub.attach_user(conn)
            hub.subscribe(conn, G, last_seq=0, floor=0)
            hub.subscribe(conn, "g2", last_seq=0, floor=0)
            assert conn in hub.connections and hub.online_user_ids == {"bob"}
            raise RuntimeError("boom")

    assert hub.connections == set()
    assert hub.by_user == {} and hub.channels == {}
    assert conn.groups == set()


async def test_register_keeps_the_users_other_connections() -> None:
    hub = make_hub()
    one, two = make_conn(user="bob"), make_conn(user="bob")
    async with hub.register(two):
        hub.attach_user(two)
        hub.subscribe(two, G, last_seq=0, floor=0)
        async with hub.register(one):
            hub.attach_user(one)
            hub.subscribe(one, G, last_seq=0, floor=0)
        assert hub.user_connections("bob") == (two,)
        assert hub.channels[G].members == {two}
    assert hub.by_user == {} and hub.channels == {}


async def test_malformed_bus_events_are_dropped_without_breaking_delivery() -> None:
    hub = make_hub()
    transport = FakeTransport()
    join(hub, make_conn(transport))

    hub.deliver(BusEvent(events.MESSAGE, {"group_id": G}))  # no seq
    hub.deliver(BusEvent(events.MESSAGE, {"group_id": G, "seq": "x"}))
    hub.deliver(BusEvent(events.READ, {"group_id": G}))
    hub.deliver(BusEvent("mystery", {}))
    hub.deliver(msg_event(3))

    await transport.wait_sent(1)
    assert seqs(transport) == [3]


async def test_close_all_closes_every_connection_with_the_code() -> None:
    hub = make_hub()
    transports = [FakeTransport() for _ in range(3)]
    conns = [make_conn(t, user=f"u{i}") for i, t in enumerate(transports)]
    for conn in conns:
        hub.connections.add(conn)

    await hub.close_all(1012, "restart", timeout=2)

    assert [t.close_code for t in transports] == [1012, 1012, 1012]


async def test_member_added_after_its_first_messages_arrived_gets_them_replayed() -> None:
    """Membership and messages travel on different streams: the add may come in late."""
    store = FakeStore()
    hub = make_hub(store)
    other_t, bob_t = FakeTransport(), FakeTransport()
    other, bob = make_conn(other_t, user="carol"), make_conn(bob_t, user="bob")
    hub.attach_user(other)
    hub.attach_user(bob)
    hub.subscribe(other, G, last_seq=7, floor=7)
    # Bob was added at seq 7; messages 8 and 9 reach this instance before the add does.
    for seq in (8, 9):
        store.add(G, seq)
        hub.deliver(msg_event(seq))
    await other_t.wait_sent(2)

    added = {"group_id": G, "user_id": "bob", "added": True, "last_seq": 7}
    hub.deliver(BusEvent(events.MEMBERSHIP, added))
    store.add(G, 10)
    hub.deliver(msg_event(10))

    await bob_t.wait_sent(3)
    assert seqs(bob_t) == [8, 9, 10]
    await asyncio.wait_for(asyncio.gather(*hub.tasks), 2)
    hub.deliver(msg_event(11))
    await bob_t.wait_sent(4)
    assert seqs(bob_t) == [8, 9, 10, 11]


def membership(group_id: str, user: str, *, added: bool, last_seq: int = 0) -> BusEvent:
    data = events.membership_event(group_id=group_id, user_id=user, added=added, last_seq=last_seq)
    return BusEvent(events.MEMBERSHIP, data)


async def test_membership_changes_during_an_auth_read_are_collected_for_it() -> None:
    hub = make_hub()
    with hub.membership_log("bob") as changes:
        hub.deliver(membership("g9", "bob", added=False))
        hub.deliver(membership("g8", "carol", added=True))
        hub.deliver(membership("g7", "bob", added=True, last_seq=4))
    assert [(c["group_id"], c["added"]) for c in changes] == [("g9", False), ("g7", True)]
    assert hub._membership_logs == {}, "the log is dropped once the auth is done"
    hub.deliver(membership("g6", "bob", added=True))
    assert len(changes) == 2


async def test_join_replays_what_the_channel_delivered_since_the_read() -> None:
    store = FakeStore()
    for seq in (3, 4):
        store.add(G, seq)
    hub = make_hub(store)
    first = FakeTransport()
    join(hub, make_conn(first), last_seq=2)
    hub.deliver(msg_event(3))
    hub.deliver(msg_event(4))
    await first.wait_sent(2)
    # a second connection read last_seq=2 from the database before 3 and 4 went by
    late = FakeTransport()
    conn = make_conn(late, user="bob")
    hub.attach_user(conn)
    hub.join(conn, G, last_seq=2)
    hub.deliver(msg_event(5))
    await late.wait_sent(3)
    assert seqs(late) == [3, 4, 5]


async def test_a_notification_published_twice_is_pushed_once() -> None:
    hub = make_hub()
    transport = FakeTransport()
    hub.attach_user(make_conn(transport, user="erin"))
    data = {
        "user_id": "erin",
        "notification_id": "n1",
        "type": "t",
        "title": "x",
        "content": "",
        "created_at": 1,
    }
    hub.deliver(BusEvent(events.NOTIFICATION, data))
    hub.deliver(BusEvent(events.NOTIFICATION, dict(data)))
    hub.deliver(BusEvent(events.NOTIFICATION, {**data, "notification_id": "n2"}))
    await transport.wait_sent(2)
    assert [f["data"]["notification_id"] for f in transport.of_type("notification")] == ["n1", "n2"]


async def test_a_push_event_gives_each_connected_user_their_own_notification() -> None:
    """One event per push: every connection of each listed user that is on this instance
    gets a frame with that user's notification id and the shared fields; a user who is not
    connected here costs nothing, and the event published again pushes nothing twice."""
    hub = make_hub()
    erin_tab, erin_phone, frank = FakeTransport(), FakeTransport(), FakeTransport()
    hub.attach_user(make_conn(erin_tab, user="erin"))
    hub.attach_user(make_conn(erin_phone, user="erin"))
    hub.attach_user(make_conn(frank, user="frank"))
    shared = {"type": "t", "title": "Hall B", "content": "at 10", "created_at": 7}
    push = {"users": [["erin", "n-e"], ["gina", "n-g"], ["frank", "n-f"]], **shared}
    hub.deliver(BusEvent(events.NOTIFICATION, push))
    hub.deliver(BusEvent(events.NOTIFICATION, dict(push)))
    for transport, notification_id in ((erin_tab, "n-e"), (erin_phone, "n-e"), (frank, "n-f")):
        await transport.wait_sent(1)
        assert [f["data"] for f in transport.of_type("notification")] == [
            {"notification_id": notification_id, **shared}
        ]


async def test_gap_fill_that_finds_the_gap_closed_does_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = FakeStore()
    hub = make_hub(store)
    conn = make_conn()
    join(hub, conn, last_seq=2)
    channel = hub.channels[G]
    await hub._fill_gap(channel)  # the missing seq came between the timer and the task
    assert store.calls == [] and "failed" not in caplog.text


async def test_a_large_group_is_sent_a_slice_per_loop_turn_in_order() -> None:
    """Over AT_ONCE members, a fan-out yields between slices; every member still gets each
    message once, in seq order, and one that leaves meanwhile gets nothing more."""
    from app.realtime.hub import AT_ONCE, EMIT_SLICE

    hub = make_hub()
    transports = [FakeTransport() for _ in range(AT_ONCE + EMIT_SLICE * 2 + 10)]
    conns = [make_conn(t, user=f"u{i}") for i, t in enumerate(transports)]
    for conn in conns:
        join(hub, conn, last_seq=2)
    for seq in (3, 4, 5):
        hub.deliver(msg_event(seq))
    # Only the first slice went out synchronously.
    assert sum(1 for c in conns if c.queue) == EMIT_SLICE
    waiting = next(i for i, c in enumerate(conns) if not c.queue)  # not served yet
    hub.unsubscribe(conns[waiting], G)
    stay = [t for i, t in enumerate(transports) if i != waiting]
    async with asyncio.timeout(5):
        for t in stay:
            await t.wait_sent(3)
    for t in stay:
        assert seqs(t) == [3, 4, 5]
    assert not hub._backlog  # every slice went out: nothing more is coming
    assert seqs(transports[waiting]) == []
    small = make_hub()  # a group of AT_ONCE members still goes out at once
    smalls = [FakeTransport() for _ in range(AT_ONCE)]
    small_conns = [make_conn(t, user=f"s{i}") for i, t in enumerate(smalls)]
    for conn in small_conns:
        join(small, conn, last_seq=2)
    small.deliver(msg_event(3))
    assert all(c.queue for c in small_conns) and not small._backlog
    for t in smalls:
        await t.wait_sent(1)
        assert seqs(t) == [3]


def direct_member(hub: Hub, user: str, *, last_seq: int = 2) -> tuple[DirectFake, Connection]:
    transport = DirectFake()
    conn = make_conn(transport, user=user, start=False)  # type: ignore[arg-type]
    join(hub, conn, last_seq=last_seq)
    conn.floors.clear()  # a member past its join: nothing of the group is floored any more
    return transport, conn


def wire_seqs(transport: DirectFake) -> list[int]:
    return [f["data"]["seq"] for f in parse_frames(b"".join(transport.socket.chunks))]


async def test_messages_that_meet_in_a_large_fan_out_share_one_write_per_member() -> None:
    """A message that arrives while a large fan-out is still going joins it: each member not
    served yet gets both in one socket write, and every member gets each message once in
    seq order."""
    from app.realtime.hub import AT_ONCE, EMIT_SLICE

    hub = make_hub()
    members = [direct_member(hub, f"u{i}") for i in range(AT_ONCE + EMIT_SLICE * 3 + 7)]
    hub.deliver(msg_event(3))
    served = [t for t, _ in members if t.socket.chunks]
    assert len(served) == EMIT_SLICE  # one slice went out at once; the rest waits a turn
    hub.deliver(msg_event(4))
    hub.deliver(msg_event(5))
    async with asyncio.timeout(5):
        while hub._backlog:
            await asyncio.sleep(0)
    for transport, _ in members:
        assert wire_seqs(transport) == [3, 4, 5]
    writes = [len(t.socket.chunks) for t, _ in members]
    # Served with 3 alone first, then 4 and 5 together: two writes; the others: one write.
    assert writes.count(2) == EMIT_SLICE and writes.count(1) == len(members) - EMIT_SLICE
    assert hub.channels[G].fanout is None


async def test_a_member_who_joins_mid_fan_out_starts_a_fan_out_of_its_own() -> None:
    """Recipients are the members when a fan-out began: a message after a join is not merged
    into the earlier fan-out, so the newcomer gets it, and only messages after its join."""
    from app.realtime.hub import AT_ONCE

    hub = make_hub()
    members = [direct_member(hub, f"u{i}") for i in range(AT_ONCE + 1)]
    hub.deliver(msg_event(3))
    newcomer, _ = direct_member(hub, "late", last_seq=3)
    hub.deliver(msg_event(4))
    assert len(hub._backlog) == 2
    async with asyncio.timeout(5):
        while hub._backlog:
            await asyncio.sleep(0)
    assert wire_seqs(newcomer) == [4]
    for transport, _ in members:
        assert wire_seqs(transport) == [3, 4]


async def test_a_held_or_backed_up_member_of_a_shared_write_gets_each_message_in_order() -> None:
    """Shared writes fall back to one message at a time for a member that replays (held),
    one floored by its join, and one whose socket is backed up (queued, then flushed)."""
    from app.realtime.hub import AT_ONCE

    hub = make_hub()
    members = [direct_member(hub, f"u{i}") for i in range(AT_ONCE)]
    held_t, held = direct_member(hub, "held")
    floored_t, floored = direct_member(hub, "floored")
    floored.floors[G] = 4  # its join read the group at seq 4: 3 and 4 reach it by replay
    slow_t, slow = direct_member(hub, "slow")
    hub.hold(held, G)
    slow_t.writable.clear()
    hub.deliver(msg_event(3))
    hub.deliver(msg_event(4))
    hub.deliver(msg_event(5))
    async with asyncio.timeout(5):
        while hub._backlog:
            await asyncio.sleep(0)
    assert wire_seqs(floored_t) == [5]
    assert [seq for seq, _ in held.holds[G]] == [3, 4, 5] and wire_seqs(held_t) == []
    hub.release(held, G, replayed_upto=3)
    assert wire_seqs(held_t) == [4, 5]
    assert wire_seqs(slow_t) == [] and len(slow.queue) == 3
    slow_t.writable.set()
    await asyncio.wait_for(slow.flush(), 2)
    assert wire_seqs(slow_t) == [3, 4, 5]
    for transport, _ in members:
        assert wire_seqs(transport) == [3, 4, 5]
