"""The statements every WebSocket auth, message and read mark runs, on plain asyncpg connections.

Postgres only. Through an ORM session each of these cost 0.5–1 ms of CPU (session, pool
checkout, greenlet hops, compiled-statement bookkeeping); here each is one prepared
statement on a connection lent by app.db.pgpool, 0.1–0.2 ms. The REST offline fetch (`GET
/messages/offline`, what every client asks on reconnect) reads here too, and notification
pushes are stored here (one statement for all of a push's rows). Everything else
(the rest of REST, group management, the outbox relay) stays on SQLAlchemy.
No statement leaves session state behind (no SET, LISTEN, cursors or advisory locks, no
open transaction), so a connection goes back to the pool as it is: no reset query.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Hashable,
    Iterable,
    Mapping,
    Sequence,
)
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

import asyncpg

from app.db.base import NewMessage, NewNotifications
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

# Raise members' read marks, one entry per (user, group) ($1, $2, $3: arrays), each towards
# its seq, clamped to the group's last seq and never backwards; for each mark that moved, when
# $4 (the outbox stream) is set, store its read update ($5: encoded bus events, d.last_read_seq
# filled in here; an empty array without the outbox). A mark that would not move writes
# nothing; an entry whose user is not a member gives no row. A concurrent mark of the same user
# and group (another instance) waits on the row (ON CONFLICT) and the higher of the two is
# kept: the mark returned is the one stored. Marks are written in (user, group) order, so two
# instances' batches lock the rows they share in the same order. The outbox ids are taken
# before the entries are stored, so that each answer row carries its entry's id. Answer rows:
# (index in the arrays, from 1; the mark before; the mark now; outbox id). One autocommitted
# statement, one round trip.
ADVANCE_READ_MARKS = """
WITH mark AS (
    SELECT a.k, a.user_id, a.group_id, a.event, coalesce(r.last_read_seq, 0) AS before,
           greatest(0, least(a.seq, g.last_seq)) AS target
    FROM unnest($1::varchar[], $2::varchar[], $3::bigint[], $5::text[])
         WITH ORDINALITY AS a(user_id, group_id, seq, event, k)
    JOIN group_members m ON m.group_id = a.group_id AND m.user_id = a.user_id
    JOIN groups g ON g.id = a.group_id
    LEFT JOIN read_marks r ON r.user_id = a.user_id AND r.group_id = a.group_id
), moved AS (
    INSERT INTO read_marks (user_id, group_id, last_read_seq, updated_at)
    SELECT user_id, group_id, target, clock_timestamp() FROM mark WHERE target > before
    ORDER BY user_id, group_id
    ON CONFLICT (user_id, group_id) DO UPDATE
    SET last_read_seq = greatest(read_marks.last_read_seq, excluded.last_read_seq),
        updated_at = excluded.updated_at
    RETURNING user_id, group_id, last_read_seq
), announced AS (
    SELECT mark.k, moved.last_read_seq, mark.event,
           CASE WHEN $4::varchar IS NOT NULL
                THEN nextval(pg_get_serial_sequence('outbox', 'id')) END AS outbox_id
    FROM mark JOIN moved USING (user_id, group_id)
), event AS (
    INSERT INTO outbox (id, stream, payload, created_at)
    SELECT outbox_id, $4::varchar,
           convert_to(jsonb_set(event::jsonb, '{d,last_read_seq}', to_jsonb(last_read_seq))
                      ::text, 'UTF8'),
           clock_timestamp()
    FROM announced WHERE outbox_id IS NOT NULL
)
SELECT mark.k, mark.before, coalesce(announced.last_read_seq, mark.before), announced.outbox_id
FROM mark LEFT JOIN announced USING (k)
"""

MARKS_BATCH = 500  # (user, group) entries per read-mark statement

# A push's notifications ($1 ids, $2 users: arrays; the rest shared) and, when $7 (the outbox
# stream) is set, the push's bus event ($8) in the outbox. One autocommitted statement.
STORE_NOTIFICATIONS = """
WITH stored AS (
    INSERT INTO notifications (id, user_id, type, title, content, created_at)
    SELECT n.id, n.user_id, $3, $4, $5, $6
    FROM unnest($1::varchar[], $2::varchar[]) AS n(id, user_id)
), event AS (
    INSERT INTO outbox (stream, payload, created_at)
    SELECT $7::varchar, $8::bytea, $6 WHERE $7::varchar IS NOT NULL
    RETURNING id
)
SELECT (SELECT id FROM event)
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


K = TypeVar("K", bound=Hashable)
A = TypeVar("A")
V = TypeVar("V")


def fail_waiting(waiting: dict[Any, list[tuple[Any, asyncio.Future[Any]]]], exc: Exception) -> None:
    """Answer every caller still waiting in `waiting` with `exc`."""
    for callers in waiting.values():
        for _, future in callers:
            if not future.done():
                future.set_exception(exc)


class Batches(Generic[K, A, V]):
    """Callers that ask while a statement is in flight are answered by the next one.

    Each caller asks for a key with an argument; callers of the same key share one entry of the
    statement (`run` gets every argument asked for each key, and answers each key once).
    `run(batch)` runs one statement for up to `size` keys and returns a value (or an exception,
    for that key's callers alone) per key. Each statement costs this process (and the
    database) more than its rows do: under load, one statement serves hundreds of callers.
    """

    def __init__(
        self, run: Callable[[dict[K, list[A]]], Awaitable[Mapping[K, V | Exception]]], size: int
    ) -> None:
        self._run = run
        self._size = size
        self._waiting: dict[K, list[tuple[A, asyncio.Future[V]]]] = {}
        self._runner: asyncio.Task[None] | None = None

    @property
    def idle(self) -> bool:
        return self._runner is None and not self._waiting

    async def ask(self, key: K, arg: A) -> V:
        future: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key, []).append((arg, future))
        if self._runner is None:
            self._runner = asyncio.get_running_loop().create_task(self._run_waiting())
        return await future

    async def close(self) -> None:
        """Stop; whoever still waits gets Unavailable."""
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
            self._runner = None
        # A runner cancelled before it ran never reaches its `finally`.
        left, self._waiting = self._waiting, {}
        fail_waiting(left, Unavailable("storage closed"))

    async def _run_waiting(self) -> None:
        try:
            while self._waiting:
                waiting = self._waiting
                if len(waiting) <= self._size:
                    self._waiting = {}
                else:
                    batch = list(waiting)[: self._size]
                    waiting = {key: self._waiting.pop(key) for key in batch}
                try:
                    found = await self._run(
                        {key: [arg for arg, _ in callers] for key, callers in waiting.items()}
                    )
                except Exception as exc:
                    fail_waiting(waiting, exc)
                    continue
                except BaseException:
                    fail_waiting(waiting, Unavailable("storage closed"))
                    raise
                for key, callers in waiting.items():
                    value = found[key]
                    for _, future in callers:
                        if future.done():
                            continue
                        if isinstance(value, Exception):
                            future.set_exception(value)
                        else:
                            future.set_result(value)
        finally:
            self._runner = None
            left, self._waiting = self._waiting, {}
            fail_waiting(left, Unavailable("storage closed"))  # only when cancelled (close)


SeqRows = Iterable[Sequence[Any]]  # (user_id, group_id, last_seq) rows


class UserSeqReads:
    """{group_id: last_seq} of each user's groups, for every WebSocket auth.

    Auths come in crowds (a reconnect storm after a deploy or a network blip): the users
    asking while a read is in flight are read together in the next one (`Batches`), one
    statement for up to SEQS_BATCH users. `read(users)` runs one statement; both hot paths
    (Postgres, SQLite) use this.
    """

    def __init__(self, read: Callable[[list[str]], Awaitable[SeqRows]]) -> None:
        self._read = read
        self._batches: Batches[str, None, dict[str, int]] = Batches(self._read_batch, SEQS_BATCH)

    @property
    def idle(self) -> bool:
        return self._batches.idle

    async def ask(self, user_id: str) -> dict[str, int]:
        # A dict of the caller's own (a user asking twice gets two).
        return dict(await self._batches.ask(user_id, None))

    async def close(self) -> None:
        await self._batches.close()

    async def _read_batch(self, users: dict[str, list[None]]) -> Mapping[str, dict[str, int]]:
        found: dict[str, dict[str, int]] = {user_id: {} for user_id in users}
        for row in await self._read(list(users)):
            found[row[0]][row[1]] = row[2]
        return found


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


@dataclass(frozen=True, slots=True)
class MarkAsk:
    """One caller's read mark, waiting for the next batch (`HotPath.advance_read_mark`)."""

    seq: int
    outbox_stream: str | None
    outbox_event: bytes


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
        self._marks: Batches[tuple[str, str], MarkAsk, tuple[MarkRow | None, MarkAsk]] = Batches(
            self._advance_batch, MARKS_BATCH
        )

    async def start(self) -> None:
        """Create the pool; connections open on first use, so a database that is down at
        start-up delays nothing (requests answer 503 until it is back)."""
        self._pool = LeanPool(self.dsn, size=self.size, connect_timeout=self.connect_timeout)

    async def close(self) -> None:
        await self._seqs.close()
        await self._marks.close()
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

        Marks asked while a statement is in flight go together in the next (`Batches`). Two
        marks of one user and group in a batch are one entry, for the higher seq: its caller
        gets the move (and announces it), the other the mark that is then stored.
        """
        ask = MarkAsk(seq, outbox_stream, outbox_event)
        row, by = await self._marks.ask((user_id, group_id), ask)
        if row is None or by is ask:
            return row
        return MarkRow(before=row.now, now=row.now, outbox_id=None)

    async def _advance_batch(
        self, asked: dict[tuple[str, str], list[MarkAsk]]
    ) -> dict[tuple[str, str], tuple[MarkRow | None, MarkAsk] | Exception]:
        """One statement per outbox stream (the service has one) for a batch of marks."""
        highest = {key: max(asks, key=lambda a: a.seq) for key, asks in asked.items()}
        found: dict[tuple[str, str], tuple[MarkRow | None, MarkAsk] | Exception] = {}
        for stream in {ask.outbox_stream for ask in highest.values()}:
            keys = [key for key, ask in highest.items() if ask.outbox_stream == stream]
            try:
                found.update(await self._advance(keys, highest, stream))
            except asyncpg.PostgresError:
                # One entry's error (its group deleted meanwhile, say) fails the statement:
                # each entry on its own then, so that it fails alone.
                for key in keys:
                    try:
                        found.update(await self._advance([key], highest, stream))
                    except Exception as exc:
                        found[key] = exc
        return found

    async def _advance(
        self, keys: list[tuple[str, str]], asks: dict[tuple[str, str], MarkAsk], stream: str | None
    ) -> dict[tuple[str, str], tuple[MarkRow | None, MarkAsk]]:
        async with self._connection() as connection:
            rows = await connection.fetch(
                ADVANCE_READ_MARKS,
                [user_id for user_id, _ in keys],
                [group_id for _, group_id in keys],
                [asks[key].seq for key in keys],
                stream,
                [asks[key].outbox_event.decode() for key in keys] if stream is not None else [],
            )
        found: dict[tuple[str, str], tuple[MarkRow | None, MarkAsk]] = {
            key: (None, asks[key]) for key in keys
        }
        for k, before, now, outbox_id in rows:
            key = keys[k - 1]
            found[key] = (MarkRow(before, now, outbox_id), asks[key])
        return found

    async def store_notifications(
        self, new: NewNotifications, *, outbox_stream: str | None, outbox_event: bytes
    ) -> int | None:
        """Store a push's notifications; with `outbox_stream`, `outbox_event` (the push's
        encoded bus event) goes to the outbox in the same statement: its entry id."""
        async with self._connection() as connection:
            outbox_id: int | None = await connection.fetchval(
                STORE_NOTIFICATIONS,
                new.ids,
                new.user_ids,
                new.type,
                new.title,
                new.content,
                new.created_at,
                outbox_stream,
                outbox_event if outbox_stream is not None else None,
            )
        return outbox_id

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
