"""The statements every WebSocket auth, message and read mark runs, on plain asyncpg connections.

Postgres only. Through an ORM session each of these cost 0.5–1 ms of CPU (session, pool
checkout, greenlet hops, compiled-statement bookkeeping); here each is one prepared
statement on a connection lent by app.db.pgpool, 0.1–0.2 ms. The REST offline fetch (`GET
/messages/offline`, what every client asks on reconnect) reads here too. Everything else
(the rest of REST, group management, the outbox relay) stays on SQLAlchemy.
No statement leaves session state behind (no SET, LISTEN, cursors or advisory locks, no
open transaction), so a connection goes back to the pool as it is: no reset query.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from app.db.base import NewMessage
from app.db.pgpool import LeanPool
from app.errors import Unavailable
from app.schemas.events import message_fields

log = logging.getLogger("app.db")

SEQS_BATCH = 500  # users per group read (a statement's array, and its rows, stay small)

# Take the group's next seq (the row lock serialises concurrent senders: no gap, no
# duplicate), insert the message and, when $10 (the outbox stream) is set, its bus event with
# seq and created_at filled in. One autocommitted statement, one round trip.
STORE_MESSAGE = """
WITH next AS (
    UPDATE groups SET last_seq = last_seq + 1
    WHERE id = $2
      AND EXISTS (SELECT 1 FROM group_members WHERE group_id = $2 AND user_id = $3)
    RETURNING last_seq, clock_timestamp() AS created_at
), stored AS (
    INSERT INTO messages (id, group_id, seq, sender_id, sender_name, msg_type, content,
                          image_url, client_msg_id, created_at)
    SELECT $1, $2, last_seq, $3, $4, $5, $6, $7, $8, created_at FROM next
    RETURNING seq, created_at, floor(extract(epoch FROM created_at) * 1000)::bigint AS created_ms
), event AS (
    INSERT INTO outbox (stream, payload, created_at)
    SELECT $10::varchar,
           convert_to(jsonb_set(jsonb_set($9::jsonb, '{d,seq}', to_jsonb(seq)),
                                '{d,created_at}', to_jsonb(created_ms))::text, 'UTF8'),
           created_at
    FROM stored WHERE $10::varchar IS NOT NULL
    RETURNING id
)
SELECT stored.seq, stored.created_ms, (SELECT id FROM event) AS outbox_id FROM stored
"""

# Raise a member's read mark towards $3, clamped to the group's last seq and never backwards,
# and when it moved and $4 (the outbox stream) is set, store its read update ($5, an encoded
# bus event whose d.last_read_seq the statement fills in). A mark that would not move writes
# nothing. No row: the user is not a member. A concurrent mark of the same user and group
# waits on the row (ON CONFLICT) and takes the higher of the two: the mark returned is the one
# stored. One autocommitted statement, one round trip.
ADVANCE_READ_MARK = """
WITH mark AS (
    SELECT coalesce(r.last_read_seq, 0) AS before, greatest(0, least($3, g.last_seq)) AS target
    FROM group_members m JOIN groups g ON g.id = m.group_id
    LEFT JOIN read_marks r ON r.user_id = m.user_id AND r.group_id = m.group_id
    WHERE m.group_id = $2 AND m.user_id = $1
), moved AS (
    INSERT INTO read_marks (user_id, group_id, last_read_seq, updated_at)
    SELECT $1, $2, target, clock_timestamp() FROM mark WHERE target > before
    ON CONFLICT (user_id, group_id) DO UPDATE
    SET last_read_seq = greatest(read_marks.last_read_seq, excluded.last_read_seq),
        updated_at = excluded.updated_at
    RETURNING last_read_seq
), event AS (
    INSERT INTO outbox (stream, payload, created_at)
    SELECT $4::varchar,
           convert_to(jsonb_set($5::jsonb, '{d,last_read_seq}', to_jsonb(moved.last_read_seq))
                      ::text, 'UTF8'),
           clock_timestamp()
    FROM moved, mark WHERE $4::varchar IS NOT NULL AND moved.last_read_seq > mark.before
    RETURNING id
)
SELECT mark.before, coalesce((SELECT last_read_seq FROM moved), mark.before),
       (SELECT id FROM event)
FROM mark
"""

# The groups of every user in a batch of WebSocket auths (HotPath.seqs_for_user).
SEQS_FOR_USERS = """
SELECT m.user_id, g.id, g.last_seq FROM group_members m JOIN groups g ON g.id = m.group_id
WHERE m.user_id = ANY($1::varchar[])
"""

MESSAGES_AFTER = """
SELECT id, group_id, seq, sender_id, sender_name, msg_type, content, image_url,
       floor(extract(epoch FROM created_at) * 1000)::bigint AS created_ms
FROM messages WHERE group_id = $1 AND seq > $2 ORDER BY seq LIMIT $3
"""

# The caller's unread messages across its groups (past its read mark, sent by others), in
# keyset order; the second form continues after a cursor's (created_at, id). Each group
# gives its first $2 unread in seq order, read from its (group_id, seq) index, and those are
# merged: the cost follows the caller's unread messages, not the table (ordering by
# created_at alone made the planner walk the whole table's created_at index, every group's
# history, for each request). A group's seq and created_at are taken together under its row
# lock (STORE_MESSAGE; the ORM path likewise), so seq order is its created_at order.
_UNREAD = """
SELECT m.id, m.group_id, m.seq, m.sender_id, m.sender_name, m.msg_type, m.content, m.image_url,
       floor(extract(epoch FROM m.created_at) * 1000)::bigint AS created_ms, m.created_at
FROM group_members gm
LEFT JOIN read_marks r ON r.group_id = gm.group_id AND r.user_id = gm.user_id
CROSS JOIN LATERAL (
    SELECT * FROM messages m
    WHERE m.group_id = gm.group_id AND m.seq > coalesce(r.last_read_seq, 0)
      AND m.sender_id <> gm.user_id {after}
    ORDER BY m.seq LIMIT $2
) m
WHERE gm.user_id = $1
ORDER BY m.created_at, m.id LIMIT $2
"""
UNREAD = _UNREAD.format(after="")
UNREAD_AFTER = _UNREAD.format(after="AND (m.created_at, m.id) > ($3, $4)")

# What a dead, refusing or overloaded database raises: the caller answers 503. (A backend
# killed between statements can leave its connection's protocol out of step, which asyncpg
# reports as InternalClientError until it sees the socket close.)
OUTAGE = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
)


def fail_waiting(waiting: dict[str, list[asyncio.Future[dict[str, int]]]], exc: Exception) -> None:
    """Answer every caller still waiting in `waiting` with `exc`."""
    for futures in waiting.values():
        for future in futures:
            if not future.done():
                future.set_exception(exc)


SeqRows = Iterable[Sequence[Any]]  # (user_id, group_id, last_seq) rows


class UserSeqReads:
    """{group_id: last_seq} of each user's groups, for every WebSocket auth.

    Auths come in crowds (a reconnect storm after a deploy or a network blip): the users
    asking while a read is in flight are read together in the next one, one statement for up
    to SEQS_BATCH users. Each statement costs this process (and the database) more than its
    rows do. `read(users)` runs one statement; both hot paths (Postgres, SQLite) use this.
    """

    def __init__(self, read: Callable[[list[str]], Awaitable[SeqRows]]) -> None:
        self._read = read
        self._waiting: dict[str, list[asyncio.Future[dict[str, int]]]] = {}
        self._reader: asyncio.Task[None] | None = None

    @property
    def idle(self) -> bool:
        return self._reader is None and not self._waiting

    async def ask(self, user_id: str) -> dict[str, int]:
        future: asyncio.Future[dict[str, int]] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(user_id, []).append(future)
        if self._reader is None:
            self._reader = asyncio.get_running_loop().create_task(self._read_waiting())
        return await future

    async def close(self) -> None:
        """Stop reading; whoever still waits gets Unavailable."""
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            self._reader = None
        # A reader cancelled before it ran never reaches its `finally`.
        left, self._waiting = self._waiting, {}
        fail_waiting(left, Unavailable("storage closed"))

    async def _read_waiting(self) -> None:
        try:
            while self._waiting:
                waiting = self._waiting
                if len(waiting) <= SEQS_BATCH:
                    self._waiting = {}
                else:
                    batch = list(waiting)[:SEQS_BATCH]
                    waiting = {user_id: self._waiting.pop(user_id) for user_id in batch}
                try:
                    rows = await self._read(list(waiting))
                except Exception as exc:
                    fail_waiting(waiting, exc)
                    continue
                except BaseException:
                    fail_waiting(waiting, Unavailable("storage closed"))
                    raise
                found: dict[str, dict[str, int]] = {user_id: {} for user_id in waiting}
                for row in rows:
                    found[row[0]][row[1]] = row[2]
                for user_id, futures in waiting.items():
                    seqs = found[user_id]
                    for i, future in enumerate(futures):
                        if not future.done():
                            future.set_result(seqs if i == 0 else dict(seqs))
        finally:
            self._reader = None
            left, self._waiting = self._waiting, {}
            fail_waiting(left, Unavailable("storage closed"))  # only when cancelled (close)


class DuplicateMessage(Exception):
    """(group, sender, client_msg_id) is stored already: an idempotent retry."""


@dataclass(frozen=True, slots=True)
class StoredRow:
    seq: int
    created_ms: int
    outbox_id: int | None


@dataclass(frozen=True, slots=True)
class MarkRow:
    """A read mark before and after `advance_read_mark`, and its read update's outbox entry
    (when it moved and the outbox is on)."""

    before: int
    now: int
    outbox_id: int | None

    @property
    def moved(self) -> bool:
        return self.now != self.before


def asyncpg_dsn(url: str) -> str:
    """A libpq-style DSN from the service's DATABASE_URL (any SQLAlchemy driver suffix)."""
    scheme, sep, rest = url.partition("://")
    return "postgresql" + sep + rest if scheme.startswith(("postgresql", "postgres")) else url


class HotPath:
    def __init__(
        self,
        url: str,
        *,
        size: int,
        connect_timeout: float = 5.0,
        timeout: float = 10.0,
    ) -> None:
        self.dsn = asyncpg_dsn(url)
        self.size = size
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self._pool: LeanPool | None = None
        self._seqs = UserSeqReads(self._read_seqs)

    async def start(self) -> None:
        """Create the pool; connections open on first use, so a database that is down at
        start-up delays nothing (requests answer 503 until it is back)."""
        self._pool = LeanPool(self.dsn, size=self.size, connect_timeout=self.connect_timeout)

    async def close(self) -> None:
        await self._seqs.close()
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection for one statement; the wait for it and the statement share one
        deadline. (asyncpg's own acquire and command timeouts each wrap the call in
        `wait_for`, a task and a timer: ~25 us of CPU on every message and every auth.)"""
        pool = self._pool
        if pool is None:
            raise Unavailable("storage unavailable, retry later")
        try:
            async with asyncio.timeout(self.timeout):
                connection = await pool.acquire()
                try:
                    yield connection
                except (asyncio.CancelledError, *OUTAGE):
                    pool.discard(connection)  # broken, or the statement may still be running
                    raise
                except asyncpg.PostgresError:
                    pool.release(connection)  # the database answered with an error
                    raise
                except BaseException:
                    pool.discard(connection)  # nothing says what state it is in
                    raise
                pool.release(connection)
        except OUTAGE as exc:
            log.warning("[WS] storage unavailable: %s", exc.__class__.__name__)
            raise Unavailable("storage unavailable, retry later") from exc

    async def seqs_for_user(self, user_id: str) -> dict[str, int]:
        """{group_id: last_seq} of every group the user belongs to (reads batched:
        `UserSeqReads`)."""
        return await self._seqs.ask(user_id)

    async def _read_seqs(self, users: list[str]) -> SeqRows:
        async with self._connection() as connection:
            rows: SeqRows = await connection.fetch(SEQS_FOR_USERS, users)
        return rows

    async def store_message(
        self, new: NewMessage, *, outbox_stream: str | None, outbox_event: bytes
    ) -> StoredRow | None:
        """Store a message with the group's next seq; None when the sender is not a member.

        With `outbox_stream`, the same statement stores `outbox_event` (an encoded bus event
        whose d.seq and d.created_at the database fills in) in the outbox.

        Raises DuplicateMessage when (group, sender, client_msg_id) exists already.
        """
        try:
            async with self._connection() as connection:
                row = await connection.fetchrow(
                    STORE_MESSAGE,
                    *new.columns(),
                    outbox_event.decode() if outbox_stream is not None else "{}",
                    outbox_stream,
                )
        except asyncpg.UniqueViolationError as exc:
            raise DuplicateMessage() from exc
        if row is None:
            return None
        return StoredRow(seq=row[0], created_ms=row[1], outbox_id=row[2])

    async def advance_read_mark(
        self,
        user_id: str,
        group_id: str,
        seq: int,
        *,
        outbox_stream: str | None = None,
        outbox_event: bytes = b"",
    ) -> MarkRow | None:
        """Raise the user's read mark towards `seq`, clamped to the group's last seq and never
        backwards; None when the user is not a member.

        With `outbox_stream`, a mark that moved stores `outbox_event` (an encoded read update
        whose d.last_read_seq the database fills in) in the outbox in the same statement.
        """
        async with self._connection() as connection:
            row = await connection.fetchrow(
                ADVANCE_READ_MARK,
                user_id,
                group_id,
                seq,
                outbox_stream,
                outbox_event.decode() if outbox_stream is not None else "{}",
            )
        if row is None:
            return None
        return MarkRow(before=row[0], now=row[1], outbox_id=row[2])

    async def messages_after(
        self, group_id: str, after_seq: int, limit: int
    ) -> list[dict[str, Any]]:
        """Up to `limit` messages of a group after `after_seq`, as `new_message` data."""
        async with self._connection() as connection:
            rows = await connection.fetch(MESSAGES_AFTER, group_id, after_seq, limit)
        return [message_fields(*row) for row in rows]

    async def unread_for(
        self, user_id: str, limit: int, after: tuple[datetime, str] | None
    ) -> list[tuple[dict[str, Any], datetime]]:
        """Up to `limit` unread messages of the user, oldest first: (`new_message` data, its
        created_at for a cursor)."""
        async with self._connection() as connection:
            if after is None:
                rows = await connection.fetch(UNREAD, user_id, limit)
            else:
                rows = await connection.fetch(UNREAD_AFTER, user_id, limit, *after)
        return [(message_fields(*row[:9]), row[9]) for row in rows]
