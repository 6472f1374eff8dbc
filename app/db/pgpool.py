"""A lean pool of asyncpg connections for single statements (the hot path's lender).

asyncpg's `Pool` wraps every lease in a proxy object, a future, a timeout context and the
release bookkeeping of a general pool (setup and reset hooks, query counts, generations,
inactivity timers): ~60–80 µs of CPU per checkout and return, as much as the statement it
lends the connection for. The hot path needs less: one statement per lease, outside any
transaction, with no session state left behind. Here a lease is a list pop and its return
an append, and a caller only waits on a future when every connection is busy.

Connections open on demand, up to `size`. One that broke, or whose statement did not
finish (cancelled, timed out, connection lost), is closed rather than returned; the next
caller opens a fresh one. A statement that failed in the database (a constraint, a
bad value) leaves its connection ready for the next, as Postgres's protocol guarantees.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

import asyncpg


class PoolClosed(ConnectionError):
    """The pool was closed: nothing more is lent."""


class LeanPool:
    def __init__(self, dsn: str, *, size: int, connect_timeout: float = 5.0) -> None:
        if size < 1:
            raise ValueError("size must be at least 1")
        self.dsn = dsn
        self.size = size
        self.connect_timeout = connect_timeout
        self._free: list[asyncpg.Connection] = []
        self._waiters: deque[asyncio.Future[asyncpg.Connection | None]] = deque()
        self._count = 0  # connections open or opening
        self._closed = False
        self._closing: set[asyncio.Task[None]] = set()

    @property
    def open_connections(self) -> int:
        """Connections open or being opened (lent or free)."""
        return self._count

    @property
    def idle_connections(self) -> int:
        return len(self._free)

    async def acquire(self) -> asyncpg.Connection:
        """A connection for one statement; give it back with `release` or `discard`."""
        if self._closed:
            raise PoolClosed("pool closed")
        free = self._free
        while free:
            connection = free.pop()
            if not connection.is_closed():
                return connection
            self._count -= 1
        if self._count < self.size:
            self._count += 1
            return await self._open()
        waiter: asyncio.Future[asyncpg.Connection | None] = (
            asyncio.get_running_loop().create_future()
        )
        self._waiters.append(waiter)
        try:
            handed = await waiter
        except BaseException:
            if not waiter.done() or waiter.cancelled():
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            elif waiter.exception() is None:
                given = waiter.result()  # handed over just as this caller gave up
                if given is not None:
                    self.release(given)
                else:
                    self._free_slot()
            raise
        if handed is not None:
            return handed
        return await self._open()  # a connection was dropped: its slot is now ours

    async def _open(self) -> asyncpg.Connection:
        """Open a connection in a slot already counted as ours."""
        try:
            return await asyncpg.connect(self.dsn, timeout=self.connect_timeout)
        except BaseException:
            self._free_slot()
            raise

    def release(self, connection: asyncpg.Connection) -> None:
        """Give back a connection whose statement finished (with a result or a database
        error)."""
        if self._closed or connection.is_closed():
            self.discard(connection)
            return
        if not self._hand_over(connection):
            self._free.append(connection)

    def discard(self, connection: asyncpg.Connection) -> None:
        """Close a connection whose statement did not finish (cancelled, timed out, broken).

        asyncpg has already sent the server a cancel request for the statement; the close
        waits for it (within `connect_timeout`), so a statement stuck behind a lock does not
        run on unnoticed after its caller gave up. The slot frees when the close is done:
        the pool never holds more than `size` backends.
        """
        if connection.is_closed() or self._closed:
            connection.terminate()  # at shutdown nothing waits for the cancel
            self._free_slot()
            return
        task = asyncio.get_running_loop().create_task(self._close(connection))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _close(self, connection: asyncpg.Connection) -> None:
        try:
            with contextlib.suppress(Exception):  # close() aborts the connection on failure
                await connection.close(timeout=self.connect_timeout)
        finally:
            self._free_slot()

    def _free_slot(self) -> None:
        """A slot came free: the first waiter opens a connection in it, else it is let go."""
        if not self._hand_over(None):
            self._count -= 1

    def _hand_over(self, given: asyncpg.Connection | None) -> bool:
        """Wake the first caller still waiting with a connection, or with None (a free slot
        to open one in); False when nobody waits."""
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(given)
                return True
        return False

    async def close(self) -> None:
        """Close the free connections and wait for those closing; lent ones are terminated
        when they come back."""
        self._closed = True
        free, self._free = self._free, []
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(PoolClosed("pool closed"))
        self._waiters.clear()
        for connection in free:
            self._count -= 1
            try:
                await connection.close(timeout=self.connect_timeout)
            except Exception:
                connection.terminate()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
