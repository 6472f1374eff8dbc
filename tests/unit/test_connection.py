"""Connection: bounded send queue, writer, slow-consumer close, expiry timer, closing."""

from __future__ import annotations

import asyncio
import time

from app.realtime.connection import Connection, ConnState
from tests.fakes import FakeTransport


def make_conn(
    transport: FakeTransport, *, limit: int = 8, write_timeout: float = 5.0, start: bool = True
) -> Connection:
    conn = Connection(transport, queue_limit=limit, write_timeout=write_timeout, remote="1.2.3.4")
    if start:
        conn.start_writer()
    return conn


async def test_writer_sends_every_frame_once_in_push_order() -> None:
    transport = FakeTransport()
    conn = make_conn(transport, limit=1000)
    frames = [f'{{"n":{i}}}' for i in range(200)]
    for i, frame in enumerate(frames):
        assert conn.push(frame)
        if i % 7 == 0:
            await asyncio.sleep(0)  # the writer drains while pushes continue

    await transport.wait_sent(200)
    assert transport.sent == frames
    assert all(sent is frame for sent, frame in zip(transport.sent, frames, strict=True))


async def test_full_queue_closes_with_1013_and_refuses_further_frames() -> None:
    transport = FakeTransport(blocked=True)
    conn = make_conn(transport, limit=3)
    assert [conn.push(f"f{i}") for i in range(3)] == [True, True, True]
    await asyncio.sleep(0)  # the writer takes f0 and blocks on the socket
    assert conn.push("f3") is True
    assert conn.push("f4") is False

    assert await transport.wait_closed() == 1013
    assert conn.close_code == 1013 and not conn.is_open
    assert conn.push("late") is False
    transport.unblock()  # the close frame goes out once the socket drains
    await asyncio.wait_for(conn.wait_closed(), 2)
    assert conn.state is ConnState.CLOSED and transport.close_sent
    assert transport.sent == [], "frames queued before the overflow are dropped, not sent"


async def test_close_frame_that_cannot_be_sent_gives_up_after_the_write_timeout() -> None:
    transport = FakeTransport(blocked=True)
    conn = make_conn(transport, write_timeout=0.05)
    await asyncio.wait_for(conn.close(1013, "overflow"), 2)
    assert conn.state is ConnState.CLOSED and not transport.close_sent
    assert transport.close_code == 1013


async def test_replies_and_replays_do_not_count_against_the_limit() -> None:
    transport = FakeTransport(blocked=True)
    conn = make_conn(transport, limit=2)
    for i in range(50):
        conn.push_replay(f"r{i}")
    assert conn.push("live1") and conn.push("live2")
    assert conn.is_open
    assert conn.push("live3") is False, "two live frames unread: the third overflows"
    assert await transport.wait_closed() == 1013


async def test_exempt_frames_are_accounted_as_they_are_sent() -> None:
    transport = FakeTransport()
    conn = make_conn(transport, limit=2)
    conn.push_replay("r0")
    conn.push("l0")
    conn.push_replay("r1")
    await transport.wait_sent(3)
    transport.block()
    conn.push("l1")
    conn.push_replay("r2")
    conn.push("l2")
    assert conn.is_open
    assert conn.push("l3") is False
    assert transport.sent == ["r0", "l0", "r1"]


async def test_write_timeout_closes_with_1013() -> None:
    transport = FakeTransport(blocked=True)
    conn = make_conn(transport, write_timeout=0.05)
    conn.push("stuck")
    assert await transport.wait_closed() == 1013
    assert conn.close_code == 1013


async def test_close_with_flush_sends_what_is_queued_first() -> None:
    transport = FakeTransport()
    conn = make_conn(transport)
    conn.push_replay("bye-1")
    conn.push_replay("bye-2")

    await asyncio.wait_for(conn.close(1008, "policy", flush=True), 2)

    assert transport.sent == ["bye-1", "bye-2"]
    assert transport.close_code == 1008 and transport.close_reason == "policy"
    assert conn.state is ConnState.CLOSED


async def test_close_is_idempotent_and_keeps_the_first_code() -> None:
    transport = FakeTransport()
    conn = make_conn(transport)
    conn.close_soon(1013, "full")
    conn.close_soon(1000)
    await asyncio.wait_for(conn.close(1012), 2)
    await asyncio.wait_for(conn.wait_closed(), 2)
    assert transport.close_code == 1013 and conn.close_code == 1013


async def test_peer_close_is_recorded_and_stops_the_writer() -> None:
    transport = FakeTransport()
    conn = make_conn(transport)
    conn.mark_closed(1001)
    assert conn.close_code == 1001 and not conn.is_open
    await asyncio.wait_for(conn.wait_closed(), 2)
    assert conn.push("x") is False
    assert transport.close_code is None, "nothing to send to a peer that is gone"


async def test_transport_failure_while_writing_closes_the_connection() -> None:
    transport = FakeTransport()
    conn = make_conn(transport)
    await transport.close(1006)
    conn.push("x")
    await asyncio.wait_for(conn.wait_closed(), 2)
    assert not conn.is_open


async def test_expiry_timer_closes_with_4001() -> None:
    transport = FakeTransport()
    conn = make_conn(transport)
    conn.set_expiry(int(time.time()))  # already due
    assert await transport.wait_closed() == 4001
    assert conn.close_code == 4001


async def test_rearming_the_expiry_postpones_the_close() -> None:
    transport = FakeTransport()
    conn = make_conn(transport)
    conn.set_expiry(int(time.time()))
    conn.set_expiry(int(time.time()) + 3600)
    conn.push_replay("still-open")
    await transport.wait_sent(1)
    await asyncio.sleep(0.05)  # past the first (cancelled) deadline
    assert conn.is_open and transport.close_code is None
    assert conn.expires_at > time.time() + 3000
    await conn.close(1000)


async def test_one_timer_expires_many_connections_each_at_its_second() -> None:
    now = int(time.time())
    soon = [FakeTransport() for _ in range(3)]
    later = FakeTransport()
    conns = [make_conn(t) for t in soon]
    for conn in conns:
        conn.set_expiry(now + 1)
    survivor = make_conn(later)
    survivor.set_expiry(now + 3600)
    codes = await asyncio.wait_for(asyncio.gather(*(t.wait_closed() for t in soon)), 3)
    assert codes == [4001, 4001, 4001]
    assert time.time() >= now + 1, "closed before the token's exp"
    assert survivor.is_open and later.close_code is None
    await survivor.close(1000)


async def test_a_closed_connection_leaves_the_expiry_buckets() -> None:
    """Nothing keeps a closed connection alive until its token's expiry (hours, often)."""
    from app.realtime.connection import expiries

    closed, gone, refreshed = (make_conn(FakeTransport()) for _ in range(3))
    for conn in (closed, gone, refreshed):
        conn.set_expiry(int(time.time()) + 3600)
    await closed.close(1000)
    gone.mark_closed(1001)
    refreshed.set_expiry(int(time.time()) + 7200)
    buckets = expiries()._buckets
    held = [conn for bucket in buckets.values() for conn in bucket]
    assert held == [refreshed]
    assert refreshed in buckets[refreshed.expires_at]
    await refreshed.close(1000)


class PacedTransport(FakeTransport):
    """A reader that keeps up, slowly: every frame takes `delay` seconds to go out."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay

    async def send_text(self, data: str) -> None:
        await asyncio.sleep(self.delay)
        await super().send_text(data)


async def test_write_timeout_bounds_each_write_not_the_whole_backlog() -> None:
    """WS_WRITE_TIMEOUT is per write (the seed's write deadline): a client that reads steadily
    is not cut off because its backlog (a replay, say) takes longer than that in all."""
    transport = PacedTransport(delay=0.02)
    conn = make_conn(transport, limit=100, write_timeout=0.5)
    for i in range(50):  # 1 s of writing in all, 0.02 s each (margin for a loaded machine)
        conn.push_replay(f"r{i}")

    await transport.wait_until(lambda t: len(t.sent) == 50 or t.closed.is_set(), timeout=10)
    assert transport.close_code is None, "closed while the client was reading steadily"
    assert conn.is_open and len(transport.sent) == 50


async def test_auth_deadlines_close_only_waiting_unauthenticated_connections() -> None:
    """At its deadline a connection still awaiting auth in `receive` closes with 1008; an
    authenticated one, and one busy handling a frame (its reader checks), stay open."""
    from app.realtime.connection import AuthDeadlines

    loop = asyncio.get_running_loop()
    deadlines = AuthDeadlines(loop)
    waiting, busy, authed = FakeTransport(), FakeTransport(), FakeTransport()
    conns = [make_conn(t) for t in (waiting, busy, authed)]
    for conn in conns:
        conn.receiving = True
    conns[1].receiving = False
    conns[2].state = ConnState.AUTHENTICATED
    start = loop.time()
    for conn in conns:
        deadlines.add(conn, start + 0.2)

    assert await waiting.wait_closed(timeout=2) == 1008
    assert waiting.close_reason == "authentication timeout"
    assert loop.time() >= start + 0.2, "closed before the deadline"
    assert busy.close_code is None and authed.close_code is None
    assert len(deadlines) == 0, "a fired deadline is let go of"
    for conn in conns[1:]:
        await conn.close(1000)


async def test_auth_deadlines_share_one_timer() -> None:
    """1,000 connections arriving over 0.3 s arm the loop's timer a handful of times (once
    per SLACK at most), not once each."""
    from app.realtime.connection import AuthDeadlines

    loop = asyncio.get_running_loop()
    deadlines = AuthDeadlines(loop)
    armed: list[float] = []
    arm = deadlines._arm

    def counting_arm(when: float) -> None:
        armed.append(when)
        arm(when)

    deadlines._arm = counting_arm  # type: ignore[method-assign]
    transports = [FakeTransport() for _ in range(1000)]
    start = loop.time()
    for i, transport in enumerate(transports):
        conn = make_conn(transport, start=False)
        conn.receiving = True
        deadlines.add(conn, start + 0.1 + 0.3 * i / 1000)
    codes = await asyncio.wait_for(
        asyncio.gather(*(t.wait_closed(timeout=3) for t in transports)), 5
    )
    assert codes == [1008] * 1000
    assert len(armed) <= 2 + 0.3 / AuthDeadlines.SLACK, armed
