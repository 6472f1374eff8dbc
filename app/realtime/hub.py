"""The hub: registry of connections by user and group, and in-order fan-out of bus events."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

from app import metrics
from app.bus.base import Bus, BusEvent
from app.realtime import frames
from app.realtime.connection import Connection
from app.realtime.frames import Outgoing, wire_of
from app.schemas import events

log = logging.getLogger("app.realtime.hub")

FetchAfter = Callable[[str, int, int], Awaitable[list[dict[str, Any]]]]
GAP_FILL_BATCH = 500
RECENT_NOTIFICATIONS = 10_000
# A group of up to AT_ONCE members gets a message in the call that delivers it (when no
# fan-out is waiting). A larger group's fan-out goes EMIT_SLICE recipients per event-loop
# turn, so the loop reads the next send and stores it while the rest of this one goes out;
# a message that arrives before a fan-out is done joins it (one write per member for both).
# Every await of a send (its frame read, the store, the publish) waits out a slice, so the
# slice sets how soon the next message joins. Measured (bench, 1000 members, alternated,
# medians of 3), 32 → 16 per turn: fan-out 1000x200 99k → 109k deliveries/s, 2000x100
# 114k → 146k, acks at 50 msg/s 4.7 → 3.6 ms (p50), rate p99 unchanged within noise; 8 gave
# more throughput still but a flooding sender's messages waited longer (fan-out p99 26 → 49
# ms at 1000x200, where 16 gave 31); 256 made an ack take ~20 ms.
AT_ONCE = 32
EMIT_SLICE = 16


class Fanout:
    """A large group's fan-out in progress: the members when it began, and the messages on
    their way to them.

    The recipients are walked as a ring from `cursor`. A message that arrives while the
    fan-out is still going joins it (if nobody joined the group since) and starts at the
    cursor, so every recipient written from then on gets the messages it lacks in one
    socket write: one syscall for several messages instead of one each, which is what lets
    a busy group catch up instead of falling further behind. Each message leaves after a full
    turn of the ring; a recipient always gets a group's messages in seq order, because a
    message joins after every message before it.
    """

    __slots__ = ("channel", "cursor", "messages", "recipients", "version")

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.recipients = tuple(channel.members)
        self.version = channel.version
        self.cursor = 0
        # [seq, frame, recipients still to write], in seq order: the first has the fewest left.
        self.messages: list[list[Any]] = []


class Channel:
    """One group's live stream on this instance: members, and the next seq to deliver.

    Two concurrent sends can reach the bus out of seq order (and across instances they often
    do); the channel holds early arrivals until the missing seq comes, so every member sees
    each message once, in strictly increasing seq order. A gap that outlives `gap_delay` is
    filled from the database.
    """

    __slots__ = (
        "expected",
        "fanout",
        "filling",
        "group_id",
        "members",
        "pending",
        "timer",
        "version",
    )

    def __init__(self, group_id: str, last_seq: int) -> None:
        self.group_id = group_id
        self.expected = last_seq + 1
        self.members: set[Connection] = set()
        self.version = 0  # bumped by every subscribe: a fan-out's recipients are still current
        self.pending: dict[int, Outgoing] = {}
        self.timer: asyncio.TimerHandle | None = None
        self.filling = False
        self.fanout: Fanout | None = None  # the channel's latest unfinished large fan-out


class Hub:
    """Connections by user and by group, fed from the bus.

    Args:
        fetch_after: loads up to N stored messages of a group after a seq (gap filling).
        service: the `service` label of the metrics.
        gap_delay: seconds a seq gap may last before it is filled from the database.
    """

    def __init__(self, *, fetch_after: FetchAfter, service: str, gap_delay: float = 0.5) -> None:
        self.fetch_after = fetch_after
        self.service = service
        self.gap_delay = gap_delay
        self.connections: set[Connection] = set()
        self.by_user: dict[str, set[Connection]] = {}
        self.channels: dict[str, Channel] = {}
        self.tasks: set[asyncio.Task[Any]] = set()
        self.stream_seen: dict[str, float] = {}
        self._membership_logs: dict[str, list[list[dict[str, Any]]]] = {}
        self._recent_notifications: OrderedDict[str, None] = OrderedDict()
        # Large fan-outs not finished yet, oldest first.
        self._backlog: deque[Fanout] = deque()
        self._backlog_scheduled = False
        self._m_connections = metrics.CONNECTIONS.labels(service)
        self._m_online = metrics.ONLINE_USERS.labels(service)
        self._m_send = metrics.MESSAGES.labels("send", service)
        self._m_lag = metrics.FANOUT_LAG.labels(service)
        self._m_replayed = metrics.REPLAYED.labels(service)
        self._m_duration = metrics.MESSAGE_DURATION.labels("send", service)
        self.stall_timeout: float | None = None

    # -- registry --------------------------------------------------------------------------

    @asynccontextmanager
    async def register(self, conn: Connection) -> AsyncIterator[Connection]:
        """Track `conn` for its lifetime; everything it subscribed is undone on exit."""
        self.connections.add(conn)
        self._m_connections.inc()
        try:
            yield conn
        finally:
            self.connections.discard(conn)
            self._m_connections.dec()
            for group_id in tuple(conn.groups):
                self.unsubscribe(conn, group_id)
            if conn.user_id is not None:
                peers = self.by_user.get(conn.user_id)
                if peers is not None:
                    peers.discard(conn)
                    if not peers:
                        del self.by_user[conn.user_id]
                        self._m_online.set(len(self.by_user))

    def attach_user(self, conn: Connection) -> None:
        assert conn.user_id is not None
        peers = self.by_user.setdefault(conn.user_id, set())
        peers.add(conn)
        self._m_online.set(len(self.by_user))

    def subscribe(
        self, conn: Connection, group_id: str, *, last_seq: int, floor: int | None
    ) -> None:
        """Deliver `group_id` live to `conn` from now on; frames with seq <= floor are skipped."""
        channel = self.channels.get(group_id)
        if channel is None:
            channel = self.channels[group_id] = Channel(group_id, last_seq)
        channel.members.add(conn)
        channel.version += 1
        conn.groups.add(group_id)
        if floor is not None:
            conn.floors[group_id] = floor
        else:
            conn.floors.pop(group_id, None)

    def unsubscribe(self, conn: Connection, group_id: str) -> None:
        conn.groups.discard(group_id)
        conn.floors.pop(group_id, None)
        conn.holds.pop(group_id, None)
        channel = self.channels.get(group_id)
        if channel is None:
            return
        channel.members.discard(conn)
        if not channel.members:
            if channel.timer is not None:
                channel.timer.cancel()
            del self.channels[group_id]

    def user_connections(self, user_id: str) -> Iterable[Connection]:
        return tuple(self.by_user.get(user_id, ()))

    def delivered_upto(self, group_id: str) -> int:
        """The last seq of the group delivered live here (0 when nobody here follows it)."""
        channel = self.channels.get(group_id)
        return channel.expected - 1 if channel is not None else 0

    @property
    def online_user_ids(self) -> set[str]:
        return set(self.by_user)

    # -- fan-out ---------------------------------------------------------------------------

    def deliver(self, event: BusEvent) -> None:
        """Route one bus event to local connections; never awaits a client."""
        kind = event.kind
        try:
            if kind == events.MESSAGE:
                self._on_message(event.data)
            elif kind == events.NOTIFICATION:
                self._on_notification(event.data)
            elif kind == events.MEMBERSHIP:
                self._on_membership(event.data)
            elif kind == events.READ:
                self._on_read(event.data)
            elif kind != "canary":
                log.warning("[WS] unknown bus event kind %r dropped", kind)
                return
        except (KeyError, TypeError, ValueError):
            log.exception("[WS] malformed %s event dropped", kind)
            return
        if event.published_at is not None:
            self._m_lag.observe(max(0.0, time.time() - event.published_at))

    def _on_message(self, data: dict[str, Any]) -> None:
        channel = self.channels.get(data["group_id"])
        if channel is None:
            return
        seq = int(data["seq"])
        if seq < channel.expected:
            return  # already delivered (duplicate entry) or before this channel started
        frame = frames.new_message(data)
        if seq > channel.expected:
            channel.pending[seq] = frame
            self._arm_gap_timer(channel)
            return
        self._emit(channel, seq, frame)
        self._drain_pending(channel)

    def _emit(self, channel: Channel, seq: int, frame: Outgoing) -> None:
        """Send a message to the channel's members: at once when the group is small, else a
        slice per loop turn (`_work_backlog`). Every fan-out that cannot finish at once goes
        through one FIFO, so each member still gets a group's messages in seq order; the
        recipients are the members at this instant that are still members when their slice
        goes out (one that joins later is served by its replay: `delivered_upto` already
        counts this seq)."""
        group_id = channel.group_id
        members = channel.members
        if not self._backlog and len(members) <= AT_ONCE:
            for conn in members:
                conn.push_message(group_id, seq, frame)
        else:
            fanout = channel.fanout
            if fanout is None or fanout.version != channel.version:
                fanout = channel.fanout = Fanout(channel)
                self._backlog.append(fanout)
            fanout.messages.append([seq, frame, len(fanout.recipients)])
            if not self._backlog_scheduled:
                self._work_backlog()
        channel.expected = seq + 1
        self._m_send.inc(len(members))

    def _work_backlog(self) -> None:
        """Write one slice of the oldest unfinished fan-outs, then let the loop turn."""
        self._backlog_scheduled = False
        backlog = self._backlog
        budget = EMIT_SLICE
        while backlog and budget > 0:
            fanout = backlog[0]
            budget -= self._write_slice(fanout, budget)
            if not fanout.messages:
                backlog.popleft()
                if fanout.channel.fanout is fanout:
                    fanout.channel.fanout = None
        if backlog:
            self._backlog_scheduled = True
            asyncio.get_running_loop().call_soon(self._work_backlog)

    @staticmethod
    def _write_slice(fanout: Fanout, budget: int) -> int:
        """Write up to `budget` recipients of `fanout` (fewer when its oldest message is done
        first); returns how many."""
        messages = fanout.messages
        recipients = fanout.recipients
        n = len(recipients)
        if n == 0:
            messages.clear()
            return 1
        count: int = min(budget, messages[0][2])
        group_id, members = fanout.channel.group_id, fanout.channel.members
        start = fanout.cursor
        batch = [(m[0], m[1]) for m in messages]
        wire = b"".join(wire_of(m[1]) for m in messages)
        for i in range(start, start + count):
            conn = recipients[i % n]
            if conn in members:
                conn.push_messages(group_id, batch, wire)
        fanout.cursor = (start + count) % n
        for message in messages:
            message[2] -= count
        while messages and messages[0][2] == 0:
            del messages[0]
        return count

    def _drain_pending(self, channel: Channel) -> None:
        pending = channel.pending
        while pending:
            frame = pending.pop(channel.expected, None)
            if frame is None:
                break
            self._emit(channel, channel.expected, frame)
        if not pending and channel.timer is not None:
            channel.timer.cancel()
            channel.timer = None

    def _arm_gap_timer(self, channel: Channel) -> None:
        if channel.timer is None and not channel.filling:
            loop = asyncio.get_running_loop()
            channel.timer = loop.call_later(self.gap_delay, self._start_fill, channel)

    def _start_fill(self, channel: Channel) -> None:
        channel.timer = None
        if self.channels.get(channel.group_id) is not channel or not channel.pending:
            return
        channel.filling = True
        self._spawn(self._fill_gap(channel))

    async def _fill_gap(self, channel: Channel) -> None:
        """Load the missing seqs from the database; skip ahead only if they do not exist."""
        try:
            if not channel.pending:
                return  # the missing seq arrived between the timer and this task
            upto = min(channel.pending)
            count = min(upto - channel.expected, GAP_FILL_BATCH)
            rows = await self.fetch_after(channel.group_id, channel.expected - 1, count)
            for data in rows:
                seq = int(data["seq"])
                if seq < channel.expected:
                    continue  # delivered live while the query ran
                channel.pending.pop(seq, None)
                self._emit(channel, seq, frames.new_message(data))
            if not rows and channel.pending and min(channel.pending) > channel.expected:
                log.warning(
                    "[WS] group %s: seqs %d..%d missing from storage, skipping",
                    channel.group_id,
                    channel.expected,
                    min(channel.pending) - 1,
                )
                channel.expected = min(channel.pending)
            self._drain_pending(channel)
        except Exception:
            log.exception("[WS] gap fill for group %s failed; will retry", channel.group_id)
        finally:
            channel.filling = False
            if channel.pending and self.channels.get(channel.group_id) is channel:
                self._arm_gap_timer(channel)

    def _on_notification(self, data: dict[str, Any]) -> None:
        """A push: `users` ([user_id, notification_id] pairs, one event per push) with the
        fields they share, or (an event published before pushes were one event) one user's
        `user_id` and `notification_id`."""
        users = data.get("users")
        if users is None:
            users = [(data["user_id"], data["notification_id"])]
        body = {k: data[k] for k in ("type", "title", "content", "created_at")}
        sent = 0
        recent = self._recent_notifications
        for user_id, notification_id in users:
            peers = self.by_user.get(user_id)
            if not peers:
                continue
            # The outbox relay may publish an entry twice (a crash between publish and
            # delete): a notification id seen lately is not pushed again.
            if notification_id in recent:
                continue
            recent[notification_id] = None
            if len(recent) > RECENT_NOTIFICATIONS:
                recent.popitem(last=False)
            frame = frames.notification({"notification_id": notification_id, **body})
            for conn in peers:
                conn.push(frame)
            sent += len(peers)
        if sent:
            self._m_send.inc(sent)

    def _on_membership(self, data: dict[str, Any]) -> None:
        user_id = data["user_id"]
        for changes in self._membership_logs.get(user_id, ()):
            changes.append(data)
        for conn in self.user_connections(user_id):
            if conn.is_open and conn.user_id is not None:
                self.apply_membership(conn, data)

    def apply_membership(self, conn: Connection, data: dict[str, Any]) -> None:
        if data["added"]:
            self.join(conn, data["group_id"], last_seq=int(data["last_seq"]))
        else:
            self.unsubscribe(conn, data["group_id"])

    def join(self, conn: Connection, group_id: str, *, last_seq: int) -> None:
        """Subscribe `conn` live after `last_seq`, read from the database a moment ago: seqs
        the channel delivered meanwhile (they can overtake a membership event, which travels
        on another stream) are replayed to it, joined to the live stream."""
        if group_id in conn.groups:
            return
        self.subscribe(conn, group_id, last_seq=last_seq, floor=last_seq)
        if self.delivered_upto(group_id) > last_seq:
            self.hold(conn, group_id)
            self._spawn(self.replay(conn, group_id, after_seq=last_seq, limit=GAP_FILL_BATCH))

    @contextmanager
    def membership_log(self, user_id: str) -> Iterator[list[dict[str, Any]]]:
        """Collect the user's membership changes while its auth reads its groups, so a change
        that lands during that read is applied after it rather than lost."""
        changes: list[dict[str, Any]] = []
        logs = self._membership_logs.setdefault(user_id, [])
        logs.append(changes)
        try:
            yield changes
        finally:
            logs.remove(changes)
            if not logs:
                del self._membership_logs[user_id]

    def _on_read(self, data: dict[str, Any]) -> None:
        peers = self.by_user.get(data["user_id"])
        if not peers:
            return
        frame = frames.shared(
            "read_update",
            {"group_id": data["group_id"], "last_read_seq": data["last_read_seq"]},
        )
        origin = data.get("origin")
        for conn in peers:
            if conn.id != origin:
                conn.push(frame)

    # -- replay (resume / sync) ------------------------------------------------------------

    def hold(self, conn: Connection, group_id: str) -> None:
        """Hold live frames of a group the connection is subscribed to while it replays."""
        if group_id in conn.groups:
            conn.holds.setdefault(group_id, [])

    def release(self, conn: Connection, group_id: str, replayed_upto: int) -> None:
        """Send held live frames past the replay and drop later duplicates of it."""
        held = conn.holds.pop(group_id, None)
        if group_id not in conn.groups:
            return
        floor = max(replayed_upto, conn.floors.get(group_id, replayed_upto))
        conn.floors[group_id] = floor
        for seq, frame in held or ():
            conn.push_message(group_id, seq, frame)

    async def replay(
        self, conn: Connection, group_id: str, *, after_seq: int, limit: int
    ) -> tuple[int, bool]:
        """Push stored messages after `after_seq` (at most `limit`), seamlessly joined to the
        live stream. Returns (last seq sent or after_seq, has_more)."""
        self.hold(conn, group_id)
        rows: list[dict[str, Any]] = []
        try:
            rows, has_more = await self.load_replay(group_id, after_seq=after_seq, limit=limit)
        finally:
            last = self.emit_replay(conn, group_id, after_seq=after_seq, rows=rows)
        return last, has_more

    async def load_replay(
        self, group_id: str, *, after_seq: int, limit: int
    ) -> tuple[list[dict[str, Any]], bool]:
        """Stored messages after `after_seq` (at most `limit`) and whether more follow."""
        rows = await self.fetch_after(group_id, after_seq, limit + 1)
        return rows[:limit], len(rows) > limit

    def emit_replay(
        self, conn: Connection, group_id: str, *, after_seq: int, rows: list[dict[str, Any]]
    ) -> int:
        """Push loaded replay rows, then release the live frames held meanwhile; returns the
        last seq replayed (or `after_seq`)."""
        last = after_seq
        for data in rows:
            conn.push_replay(frames.new_message(data))
            last = int(data["seq"])
        self._m_replayed.inc(len(rows))
        self.release(conn, group_id, last)
        return last

    # -- lifecycle -------------------------------------------------------------------------

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def run(self, bus: Bus, streams: Iterable[str]) -> None:
        """Consume every stream until cancelled; a bad event is logged and dropped."""
        async with asyncio.TaskGroup() as group:
            for stream in streams:
                group.create_task(self._consume(bus, stream))

    async def _consume(self, bus: Bus, stream: str) -> None:
        subscription = bus.subscribe(stream)
        seen = self.stream_seen
        seen[stream] = time.monotonic()
        try:
            async for event in subscription:
                seen[stream] = time.monotonic()
                try:
                    self.deliver(event)
                except Exception:
                    log.exception("[WS] delivering a %s event failed", event.kind)
                # A backlog of events is handed over without the loop turning (a ready queue
                # or a batch of stream entries): give the writers a turn per event, or a burst
                # longer than WS_SEND_QUEUE would close every connection as a slow consumer.
                await asyncio.sleep(0)
        finally:
            aclose = getattr(subscription, "aclose", None)
            if aclose is not None:
                await aclose()

    def reader_alive(self) -> bool:
        """Every stream's reader advanced within `stall_timeout` (canaries keep them moving)."""
        if self.stall_timeout is None:
            return True
        now = time.monotonic()
        return bool(self.stream_seen) and all(
            now - seen < self.stall_timeout for seen in self.stream_seen.values()
        )

    async def close_all(self, code: int, reason: str = "", timeout: float = 5.0) -> None:
        """Close every connection (graceful shutdown), bounded by `timeout`."""
        conns = tuple(self.connections)
        if not conns:
            return
        try:
            async with asyncio.timeout(timeout):
                await asyncio.gather(
                    *(c.close(code, reason) for c in conns), return_exceptions=True
                )
        except TimeoutError:
            log.warning("[WS] %d connections did not close in time", len(self.connections))
