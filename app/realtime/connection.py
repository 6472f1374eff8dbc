"""One client connection: identity, subscriptions, a bounded send queue and its writer."""

from __future__ import annotations

import asyncio
import enum
import heapq
import itertools
import logging
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import TypeVar

from app.realtime.frames import Frame, Outgoing, text_of, wire_of
from app.realtime.transport import DirectWire, Transport, TransportClosed

log = logging.getLogger("app.realtime")
T = TypeVar("T")

_ids = itertools.count(1)

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_UNSUPPORTED = 1003
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_RESTART = 1012
CLOSE_TRY_LATER = 1013
CLOSE_TOKEN_EXPIRED = 4001


class Expiries:
    """Token expiries of every connection of one event loop on a single timer.

    Connections are kept in one set per expiry second (JWT `exp` is whole seconds), and the
    loop's timer is armed for the earliest second only. A timer per connection would cost
    each one a timer handle, its arguments and a context copy (~0.6 KB plus the loop's own
    timer), for an event that mostly never fires: connections close long before.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._buckets: dict[int, set[Connection]] = {}
        self._seconds: list[int] = []  # heap of the bucket keys
        self._timer: asyncio.TimerHandle | None = None
        self._armed_for: int | None = None

    def add(self, conn: Connection, second: int) -> None:
        bucket = self._buckets.get(second)
        if bucket is None:
            bucket = self._buckets[second] = set()
            heapq.heappush(self._seconds, second)
        bucket.add(conn)
        if self._armed_for is None or second < self._armed_for:
            self._arm(second)

    def discard(self, conn: Connection, second: int) -> None:
        bucket = self._buckets.get(second)
        if bucket is not None:
            bucket.discard(conn)  # an empty bucket stays until its second: the heap owns it

    def _arm(self, second: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
        delay = max(0.0, second - time.time())
        self._timer = self._loop.call_at(self._loop.time() + delay, self._fire)
        self._armed_for = second

    def _fire(self) -> None:
        self._timer = self._armed_for = None
        now = time.time()
        seconds = self._seconds
        while seconds and seconds[0] <= now:
            for conn in self._buckets.pop(heapq.heappop(seconds), ()):
                conn.close_soon(CLOSE_TOKEN_EXPIRED, "token expired")
        if seconds:
            self._arm(seconds[0])


class AuthDeadline:
    """A connection's place in AuthDeadlines; `cancel` lets go of the connection (once it
    has authenticated or closed: nothing should keep a closed connection's objects alive
    until its deadline)."""

    __slots__ = ("conn",)

    def __init__(self, conn: Connection) -> None:
        self.conn: Connection | None = conn

    def cancel(self) -> None:
        self.conn = None


class AuthDeadlines:
    """Auth deadlines of every connection of one event loop on a single timer.

    A connection still waiting for its `auth` frame at its deadline is closed with 1008.
    Nearly every connection authenticates within milliseconds, so a timeout of its own around
    the first receive (a timer handle armed and cancelled, and the context manager around
    it) was work thrown away per connect. Here a connection costs one heap entry, and the
    timer, armed for the earliest deadline plus SLACK, fires at most 1/SLACK times a second
    however many connections arrive; a deadline is kept to within SLACK late.

    The timer closes only a connection that is waiting in `receive` (one busy with a frame
    finishes it first, as when the deadline bounded the receive itself); the connection's
    reader checks the deadline again before its next receive.
    """

    SLACK = 0.1

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._heap: list[tuple[float, int, AuthDeadline]] = []
        self._order = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._armed_for = 0.0

    def __len__(self) -> int:
        return len(self._heap)

    def add(self, conn: Connection, deadline: float) -> AuthDeadline:
        """Close `conn` (1008) if it is still unauthenticated at `deadline` (loop time)."""
        entry = AuthDeadline(conn)
        heapq.heappush(self._heap, (deadline, next(self._order), entry))
        if self._timer is None or deadline + self.SLACK < self._armed_for:
            self._arm(deadline + self.SLACK)
        return entry

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_at(when, self._fire)
        self._armed_for = when

    def _fire(self) -> None:
        self._timer = None
        now = self._loop.time()
        heap = self._heap
        while heap and heap[0][0] <= now:
            conn = heapq.heappop(heap)[2].conn
            if conn is not None and conn.state is ConnState.AWAITING_AUTH and conn.receiving:
                conn.close_soon(CLOSE_POLICY, "authentication timeout", flush=True)
        if heap:
            self._arm(heap[0][0] + self.SLACK)


def _one_per_loop(make: Callable[[asyncio.AbstractEventLoop], T]) -> Callable[[], T]:
    """A getter of the running loop's own `make(loop)`, made on first use."""
    made: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, T] = weakref.WeakKeyDictionary()

    def get() -> T:
        loop = asyncio.get_running_loop()
        found = made.get(loop)
        if found is None:
            found = made[loop] = make(loop)
        return found

    return get


auth_deadlines = _one_per_loop(AuthDeadlines)  # the running loop's AuthDeadlines
expiries = _one_per_loop(Expiries)  # the running loop's Expiries


class ConnState(enum.Enum):
    AWAITING_AUTH = "awaiting_auth"
    AUTHENTICATED = "authenticated"
    CLOSING = "closing"
    CLOSED = "closed"


class Connection:
    """A client socket as the hub sees it.

    `push` never awaits: it appends to a bounded deque and wakes the writer, which drains
    everything queued in one go per event-loop turn. A full queue closes the connection with
    1013 (the client recovers by resuming), so one slow client never holds up the others.
    """

    __slots__ = (
        "direct",
        "_appended",
        "_closed",
        "_drained",
        "_exempt",
        "_expiry",
        "_popped",
        "_wakeup",
        "_writer",
        "abandoned",
        "close_code",
        "expires_at",
        "floors",
        "groups",
        "holds",
        "id",
        "limit",
        "name",
        "queue",
        "reader",
        "receiving",
        "remote",
        "state",
        "transport",
        "user_id",
        "write_timeout",
    )

    def __init__(
        self, transport: Transport, *, queue_limit: int, write_timeout: float, remote: str = ""
    ) -> None:
        self.id = f"c{next(_ids)}"
        self.transport = transport
        # The transport's direct path (pre-built frames written straight to the socket), if any.
        self.direct: DirectWire | None = getattr(transport, "direct", None)
        self.remote = remote
        self.limit = queue_limit
        self.write_timeout = write_timeout
        self.state = ConnState.AWAITING_AUTH
        self.user_id: str | None = None
        self.name: str = ""
        self.expires_at: int = 0
        self.groups: set[str] = set()
        # Replay bookkeeping (resume/sync): live frames held while a group replays, and the
        # last replayed seq below which live frames are duplicates.
        self.holds: dict[str, list[tuple[int, Outgoing]]] = {}
        self.floors: dict[str, int] = {}
        # Frames waiting for the writer. Like the writer's events below, the deques exist only
        # once something waits: an idle connection on the direct path never needs them (each
        # empty deque or asyncio.Event is ~0.7 KB, and idle connections are the many).
        self.queue: deque[Outgoing] | tuple[()] = ()
        # Positions (in append order) of queued replies and replayed frames: they never count
        # against `limit`, which bounds the live frames a slow client has not read yet.
        self._exempt: deque[int] | tuple[()] = ()
        self._appended = 0
        self._popped = 0
        self.close_code: int | None = None
        # The task reading from the transport, and whether it is waiting for the peer now:
        # a peer that reads nothing, not even our close frame, is abandoned (see _close).
        self.reader: asyncio.Task[None] | None = None
        self.receiving = False
        self.abandoned = False
        self._wakeup: asyncio.Event | None = None  # frames queued: with the writer
        self._drained: asyncio.Event | None = None  # the queue emptied: with the writer
        self._writer: asyncio.Task[None] | None = None
        self._expiry: Expiries | None = None  # where this connection's expiry is registered
        self._closed: asyncio.Event | None = None  # made by the first wait_closed()

    def __repr__(self) -> str:
        return f"<Connection {self.id} user={self.user_id} {self.state.value}>"

    @property
    def is_open(self) -> bool:
        return self.state is ConnState.AWAITING_AUTH or self.state is ConnState.AUTHENTICATED

    # -- sending -------------------------------------------------------------------------

    def push(self, frame: Outgoing) -> bool:
        """Queue a frame without waiting; False (and a 1013 close) when the queue is full.

        On the direct path a frame goes straight into the socket's buffer while the socket
        keeps up (the common case: no queue, no task wake-up); only a backed-up socket makes
        frames wait here, bounded by `limit`.
        """
        if not self.is_open:
            return False
        queue = self.queue
        direct = self.direct
        if direct is not None and not queue and direct.writable.is_set():
            if direct.transport.is_closing():
                return False
            direct.transport.write(frame.wire if isinstance(frame, Frame) else wire_of(frame))
            return True
        if len(queue) - len(self._exempt) >= self.limit:
            self.close_soon(CLOSE_TRY_LATER, "send queue overflow: resume to catch up")
            return False
        self._queue().append(frame)
        self._appended += 1
        if len(self.queue) == 1:
            self._kick()
        return True

    def push_replay(self, frame: Outgoing) -> None:
        """Queue a replayed frame; a replay never trips the slow-consumer limit (SPEC §11)."""
        direct = self.direct
        if direct is not None and self.is_open and not self.queue and direct.writable.is_set():
            if not direct.transport.is_closing():
                direct.transport.write(wire_of(frame))
            return
        if self.is_open:
            self._exempt_positions().append(self._appended)
            self._queue().append(frame)
            self._appended += 1
            self._kick()

    def push_message(self, group_id: str, seq: int, frame: Outgoing) -> None:
        """Live group message: held during a replay, dropped when the replay covered it."""
        held = self.holds.get(group_id) if self.holds else None
        if held is not None:
            held.append((seq, frame))
            return
        if self.floors:
            floor = self.floors.get(group_id)
            if floor is not None:
                if seq <= floor:
                    return
                del self.floors[group_id]
        self.push(frame)

    def push_messages(
        self, group_id: str, messages: list[tuple[int, Outgoing]], wire: bytes
    ) -> None:
        """Live messages of one group (one or several), in seq order, whose frames joined are
        `wire`: one socket write when the socket keeps up and nothing is held or floored;
        otherwise each goes through `push_message`."""
        direct = self.direct
        if (
            direct is not None
            and not self.holds
            and not self.floors
            and not self.queue
            and self.state is ConnState.AUTHENTICATED
            and direct.writable.is_set()
        ):
            if not direct.transport.is_closing():
                direct.transport.write(wire)
            return
        for seq, frame in messages:
            self.push_message(group_id, seq, frame)

    def _queue(self) -> deque[Outgoing]:
        if not isinstance(self.queue, deque):
            self.queue = deque()
        return self.queue

    def _exempt_positions(self) -> deque[int]:
        if not isinstance(self._exempt, deque):
            self._exempt = deque()
        return self._exempt

    def _kick(self) -> None:
        """Frames are waiting: wake the writer (on the direct path, start it: a connection
        whose socket keeps up never needs one, which saves a task per connection)."""
        if self._writer is None and self.is_open and self.direct is not None:
            self._start_writer()
        if self._wakeup is not None and self._drained is not None:
            self._wakeup.set()
            self._drained.clear()

    def start_writer(self) -> None:
        """The ASGI path always has a writer task; the direct path starts one on demand."""
        if self.direct is None:
            self._start_writer()

    def _start_writer(self) -> None:
        self._wakeup = asyncio.Event()
        self._drained = asyncio.Event()
        if self.queue:
            self._wakeup.set()
        else:
            self._drained.set()
        self._writer = asyncio.get_running_loop().create_task(self._run_writer())

    async def _run_writer(self) -> None:
        """Run the writer loop of this connection's path; a failure closes the connection."""
        try:
            if self.direct is not None:
                await self._direct_loop(self.direct)
            else:
                await self._write_loop()
        except TimeoutError:
            self.close_soon(CLOSE_TRY_LATER, "write timeout")
        except TransportClosed:
            self.close_soon(1006, "")
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("[WS] writer of %s failed", self.id)
            self.close_soon(1011, "internal error")

    async def _direct_loop(self, direct: DirectWire) -> None:
        """Only for a backed-up socket: wait until it drains, then hand it what queued up."""
        queue = self._queue()
        wakeup, drained = self._wakeup, self._drained
        assert wakeup is not None and drained is not None
        while self.is_open:
            await wakeup.wait()
            wakeup.clear()
            while queue:
                async with asyncio.timeout(self.write_timeout):
                    await direct.writable.wait()
                if direct.transport.is_closing():
                    raise TransportClosed(1006)
                batch = [wire_of(frame) for frame in queue]
                queue.clear()
                self._exempt = ()
                self._popped = self._appended
                direct.transport.writelines(batch)
            drained.set()

    async def _write_loop(self) -> None:
        """The ASGI path: one awaited send per frame."""
        queue = self._queue()
        exempt = self._exempt_positions()
        wakeup, drained = self._wakeup, self._drained
        assert wakeup is not None and drained is not None
        send = self.transport.send_text
        loop = asyncio.get_running_loop()
        while self.is_open:
            await wakeup.wait()
            wakeup.clear()
            async with asyncio.timeout(self.write_timeout) as deadline:
                while queue:
                    frame = queue.popleft()
                    if exempt and exempt[0] == self._popped:
                        exempt.popleft()
                    self._popped += 1
                    await send(text_of(frame))
                    if queue:  # the timeout bounds each write, not a whole backlog
                        deadline.reschedule(loop.time() + self.write_timeout)
            drained.set()

    async def flush(self, timeout: float = 1.0) -> None:
        """Wait (bounded) until the writer has sent what is queued, before a deliberate close."""
        if self._writer is None or self._writer.done() or self._drained is None:
            return
        try:
            async with asyncio.timeout(timeout):
                await self._drained.wait()
        except TimeoutError:
            pass

    # -- token expiry ----------------------------------------------------------------------

    def set_expiry(self, expires_at: int) -> None:
        """(Re)arm the timer that closes with 4001 when the token expires unrefreshed."""
        if self._expiry is not None:
            self._expiry.discard(self, self.expires_at)
        self.expires_at = expires_at
        self._expiry = expiries()
        self._expiry.add(self, expires_at)

    # -- closing ---------------------------------------------------------------------------

    def close_soon(self, code: int, reason: str = "", *, flush: bool = False) -> None:
        """Start closing from synchronous code (fan-out, timers); idempotent. With `flush`,
        the frames already queued go out first, as with `close(..., flush=True)`."""
        if not self.is_open:
            return
        if flush:
            asyncio.get_running_loop().create_task(self.close(code, reason, flush=True))
            return
        self.state = ConnState.CLOSING
        self.close_code = code
        asyncio.get_running_loop().create_task(self._close(code, reason))

    async def close(self, code: int, reason: str = "", *, flush: bool = False) -> None:
        if not self.is_open:
            await self.wait_closed()
            return
        if flush:
            await self.flush()
        self.state = ConnState.CLOSING
        self.close_code = code
        await self._close(code, reason)

    async def _close(self, code: int, reason: str) -> None:
        if self._expiry is not None:
            self._expiry.discard(self, self.expires_at)
            self._expiry = None
        if self._writer is not None and self._writer is not asyncio.current_task():
            self._writer.cancel()
        self.queue = ()
        self._exempt = ()
        try:
            # The close frame waits for a writable socket like any frame: bounded likewise.
            async with asyncio.timeout(self.write_timeout):
                await self.transport.close(code, reason)
        except TimeoutError:
            self._abandon()
        except Exception:  # the socket may already be gone
            pass
        self._set_closed()

    def _abandon(self) -> None:
        """The peer reads nothing, not even the close frame, so it will not answer it either:
        stop the reader waiting for it (the server would otherwise only learn of the socket's
        end when TCP gives up), so the connection's slot and presence are released now."""
        reader = self.reader
        if (
            reader is not None
            and self.receiving
            and reader is not asyncio.current_task()
            and not reader.done()
        ):
            self.abandoned = True
            reader.cancel()

    def mark_closed(self, code: int) -> None:
        """The peer closed first."""
        if self.close_code is None:
            self.close_code = code
        if self.state is not ConnState.CLOSED:
            self.state = ConnState.CLOSING
            if self._expiry is not None:
                self._expiry.discard(self, self.expires_at)
                self._expiry = None
            if self._writer is not None:
                self._writer.cancel()
            self._set_closed()

    def _set_closed(self) -> None:
        self.state = ConnState.CLOSED
        if self._closed is not None:
            self._closed.set()

    async def wait_closed(self) -> None:
        if self.state is ConnState.CLOSED:
            return
        if self._closed is None:
            self._closed = asyncio.Event()
        await self._closed.wait()
