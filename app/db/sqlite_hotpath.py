"""Embedded mode's statements for every message, read mark, notification push and WebSocket
auth, on one sqlite3 connection of their own, with the writes that arrive together committed
together.

Through the ORM on aiosqlite a send cost ~2.8 ms of the server's CPU (the bench's `groups`:
a session, and a hop to aiosqlite's thread and back for each statement and the commit, each
waking the event loop) and held the engine's single connection the whole time, so sends
queued behind one another: ~330 a second, p99 8 s at 500 offered.
Here the sends, read marks and notification pushes that arrive while a transaction is being
written wait for the next, and each transaction runs in this path's own thread in one hop:
its statements (each caller's in a savepoint of its own), then one commit.
Auth reads are batched as on Postgres (`UserSeqReads`); the replay and offline reads
(`messages_after`, `unread_for`) run on the same thread. The log's checkpoints (the only
syncs to disk in WAL mode with synchronous=NORMAL) run every second on a connection and
thread of their own, not inside a commit that sends wait for.

The engine keeps its own connection for everything else (the rest of REST, group
management, notification listing and read marks). SQLite lets one writer in at a time;
both connections wait for the lock (a busy timeout) instead of failing, and this path takes
it at the start of each transaction (`BEGIN IMMEDIATE`), so a transaction never reads a
snapshot that another writer then makes stale. Only for a database in a file: a `:memory:`
database is private to its connection, and the service then goes through the ORM as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any, TypeVar

import orjson
from sqlalchemy.engine import Dialect

from app.db.base import NewMessage, NewNotifications, to_ms, utcnow
from app.db.hotpath import DuplicateMessage, MarkRow, SeqRows, StoredRow, UserSeqReads
from app.db.models import Message
from app.errors import Unavailable
from app.schemas.events import message_fields

log = logging.getLogger("app.db")

T = TypeVar("T")

WRITE_BATCH = 500  # writes (sends, read marks, pushes) per transaction
CHECKPOINT_EVERY = 1.0  # seconds between the checkpoints run beside the writes

# The group's next seq is taken by the statement that inserts the message, inside a write
# transaction (only one at a time on SQLite): no gap, no duplicate. No row: the sender is not a
# member (or the group does not exist). A repeated (group, sender, client_msg_id) fails the
# statement alone, and nothing of it stays.
INSERT_MESSAGE = """
INSERT INTO messages (id, group_id, seq, sender_id, sender_name, msg_type, content,
                      image_url, client_msg_id, created_at)
SELECT ?1, g.id, g.last_seq + 1, ?3, ?4, ?5, ?6, ?7, ?8, ?9 FROM groups g
WHERE g.id = ?2 AND EXISTS (SELECT 1 FROM group_members WHERE group_id = ?2 AND user_id = ?3)
RETURNING seq
"""
TAKE_SEQ = "UPDATE groups SET last_seq = ? WHERE id = ?"
INSERT_OUTBOX = "INSERT INTO outbox (stream, payload, created_at) VALUES (?, ?, ?)"
INSERT_NOTIFICATION = """
INSERT INTO notifications (id, user_id, type, title, content, created_at)
VALUES (?, ?, ?, ?, ?, ?)
"""
# The unique constraint a retry with the same client id runs into (SQLite names its columns).
CLIENT_ID_CONFLICT = "messages.client_msg_id"

# The group's last seq and the member's read mark; no row: not a member.
READ_MARK = """
SELECT g.last_seq, coalesce(r.last_read_seq, 0)
FROM group_members m JOIN groups g ON g.id = m.group_id
LEFT JOIN read_marks r ON r.user_id = m.user_id AND r.group_id = m.group_id
WHERE m.group_id = ?1 AND m.user_id = ?2
"""
ADVANCE_READ_MARK = """
INSERT INTO read_marks (user_id, group_id, last_read_seq, updated_at) VALUES (?1, ?2, ?3, ?4)
ON CONFLICT (user_id, group_id) DO UPDATE
SET last_read_seq = max(last_read_seq, excluded.last_read_seq), updated_at = excluded.updated_at
"""

SEQS_FOR_USERS = """
SELECT m.user_id, g.id, g.last_seq FROM group_members m JOIN groups g ON g.id = m.group_id
WHERE m.user_id IN ({marks})
"""

# The columns every read of messages here returns, in this order (`_messages`).
MESSAGES_AFTER = """
SELECT id, group_id, seq, sender_id, sender_name, msg_type, content, image_url, created_at
FROM messages WHERE group_id = ? AND seq > ? ORDER BY seq LIMIT ?
"""

# The caller's unread messages across its groups (past its read mark, sent by others), in
# keyset order. The CROSS JOIN keeps SQLite's join order as written: the caller's
# memberships, each one's read mark, then each group's (group_id, seq) index from past the
# mark, so the cost follows the unread messages, not the groups' history.
_UNREAD = """
SELECT m.id, m.group_id, m.seq, m.sender_id, m.sender_name, m.msg_type, m.content, m.image_url,
       m.created_at
FROM group_members gm
LEFT JOIN read_marks r ON r.group_id = gm.group_id AND r.user_id = gm.user_id
CROSS JOIN messages m
WHERE gm.user_id = ?1 AND m.group_id = gm.group_id AND m.seq > coalesce(r.last_read_seq, 0)
  AND m.sender_id <> ?1 {after}
ORDER BY m.created_at, m.id LIMIT ?2
"""
UNREAD = _UNREAD.format(after="")
UNREAD_AFTER = _UNREAD.format(after="AND (m.created_at, m.id) > (?3, ?4)")


@dataclass(slots=True)
class _Write:
    """One caller's statements, run in the next transaction (on this path's thread)."""

    run: Callable[[sqlite3.Connection], Any]
    future: asyncio.Future[Any]


def sqlite_file(url_database: str | None) -> bool:
    """Whether the engine's database is a file another connection can open."""
    if not url_database or url_database == ":memory:":
        return False
    return not url_database.startswith("file:")  # URI names (shared memory and the like)


class SqliteHotPath:
    """app.db.hotpath's calls (`store_message`, `advance_read_mark`, `store_notifications`,
    `seqs_for_user`, `messages_after`, `unread_for`) for SQLite."""

    def __init__(
        self,
        path: str,
        dialect: Dialect,
        *,
        busy_timeout: float = 30.0,
        checkpoint_every: float = CHECKPOINT_EVERY,
    ) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        self.checkpoint_every = checkpoint_every
        # created_at is stored and read exactly as the ORM does it (SQLAlchemy's own
        # processors for the column's type on this dialect).
        created_at = Message.__table__.c.created_at.type.dialect_impl(dialect)
        bind, read = created_at.bind_processor(dialect), created_at.result_processor(dialect, None)
        if bind is None or read is None:
            raise RuntimeError("the created_at column type has no SQLite processors")
        self._bind_time: Callable[[datetime], Any] = bind
        self._read_time: Callable[[Any], datetime | None] = read
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        self._writes: list[_Write] = []
        self._writer: asyncio.Task[None] | None = None
        self._seqs = UserSeqReads(self._read_seqs)
        self._checkpointer: asyncio.Task[None] | None = None
        self.transactions = 0  # committed write transactions (tests, diagnostics)
        self.checkpoints = 0  # checkpoints run beside the writes

    # -- life ------------------------------------------------------------------------------

    async def start(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-hot")
        await self._run(self._open)
        self._checkpointer = asyncio.get_running_loop().create_task(self._checkpoint())

    def _connect(self) -> sqlite3.Connection:
        # Autocommit mode: this class writes its own BEGIN and COMMIT.
        return sqlite3.connect(
            self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False
        )

    def _open(self) -> None:
        conn = self._connect()
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA synchronous=NORMAL")  # as the engine's connection (WAL mode)
        # In WAL mode with synchronous=NORMAL a commit writes the log and syncs nothing; the
        # syncs come with the checkpoints that copy the log into the database, which SQLite
        # otherwise runs inside the commit that fills the log past 1,000 pages. On a disk
        # whose syncs sometimes take half a second, every send waiting for that commit
        # waited that long. `_checkpoint` runs them on a connection and thread of their own.
        conn.execute("PRAGMA wal_autocheckpoint=0")
        self._conn = conn

    async def _checkpoint(self) -> None:
        """Every `checkpoint_every` s, copy what the log holds into the database (PASSIVE:
        it waits for no reader and no writer; a writer goes on appending meanwhile)."""
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-ckpt") as executor:
            conn = await loop.run_in_executor(executor, self._connect)
            try:
                while True:
                    await asyncio.sleep(self.checkpoint_every)
                    try:
                        await loop.run_in_executor(executor, _checkpoint_once, conn)
                        self.checkpoints += 1
                    except sqlite3.Error as exc:  # the next one tries again
                        log.warning("[WS] checkpoint failed: %s", exc)
            finally:
                executor.submit(conn.close)

    async def close(self) -> None:
        executor, self._executor = self._executor, None  # new calls fail from here
        await self._seqs.close()
        for task in (self._writer, self._checkpointer):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._writer = self._checkpointer = None
        # A task cancelled before it ran never reaches its `finally`: answer its callers here.
        writes, self._writes = self._writes, []
        _fail_writes(writes, Unavailable("storage closed"))
        if executor is None:
            return
        conn, self._conn = self._conn, None
        if conn is not None:
            await asyncio.get_running_loop().run_in_executor(executor, conn.close)
        executor.shutdown(wait=True)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` on this path's thread, its sqlite3 errors as Unavailable (503)."""
        if self._executor is None:
            raise Unavailable("storage closed")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        except sqlite3.OperationalError as exc:  # locked past the busy timeout, disk, I/O
            log.warning("[WS] storage unavailable: %s", exc)
            raise Unavailable("storage unavailable, retry later") from exc

    # -- writes ----------------------------------------------------------------------------

    async def store_message(
        self, new: NewMessage, *, outbox_stream: str | None = None, outbox_event: bytes = b""
    ) -> StoredRow | None:
        """Store a message with the group's next seq; None when the sender is not a member.

        With `outbox_stream` (SQLite beside a Redis bus), `outbox_event` (an encoded bus
        event) goes to the outbox in the same savepoint, its d.seq and d.created_at filled in.

        Raises DuplicateMessage when (group, sender, client_msg_id) exists already, and
        Unavailable when the transaction could not be written (nothing of it is stored).
        """
        stored: StoredRow | None = await self._write(
            partial(self._store, new, outbox_stream, outbox_event)
        )
        return stored

    def _store(
        self,
        new: NewMessage,
        outbox_stream: str | None,
        outbox_event: bytes,
        conn: sqlite3.Connection,
    ) -> StoredRow | None:
        created_at = utcnow()
        stored_at = self._bind_time(created_at)
        try:
            row = conn.execute(INSERT_MESSAGE, (*new.columns(), stored_at)).fetchone()
        except sqlite3.IntegrityError as exc:
            if new.client_msg_id is not None and CLIENT_ID_CONFLICT in str(exc):
                raise DuplicateMessage() from exc
            raise
        if row is None:
            return None
        seq, created_ms = row[0], to_ms(created_at)
        conn.execute(TAKE_SEQ, (seq, new.group_id))
        outbox_id = None
        if outbox_stream is not None:
            payload = _filled(outbox_event, seq=seq, created_at=created_ms)
            outbox_id = conn.execute(INSERT_OUTBOX, (outbox_stream, payload, stored_at)).lastrowid
        return StoredRow(seq=seq, created_ms=created_ms, outbox_id=outbox_id)

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

        With `outbox_stream`, a mark that moved stores `outbox_event` (an encoded read update)
        in the outbox in the same savepoint, its d.last_read_seq filled in.
        """
        moved: MarkRow | None = await self._write(
            partial(self._advance, user_id, group_id, seq, outbox_stream, outbox_event)
        )
        return moved

    def _advance(
        self,
        user_id: str,
        group_id: str,
        seq: int,
        outbox_stream: str | None,
        outbox_event: bytes,
        conn: sqlite3.Connection,
    ) -> MarkRow | None:
        row = conn.execute(READ_MARK, (group_id, user_id)).fetchone()
        if row is None:
            return None
        last_seq, before = row
        target = max(0, min(seq, last_seq))
        if target <= before:
            return MarkRow(before=before, now=before, outbox_id=None)
        now = utcnow()
        conn.execute(ADVANCE_READ_MARK, (user_id, group_id, target, self._bind_time(now)))
        outbox_id = None
        if outbox_stream is not None:
            payload = _filled(outbox_event, last_read_seq=target)
            outbox_id = conn.execute(
                INSERT_OUTBOX, (outbox_stream, payload, self._bind_time(now))
            ).lastrowid
        return MarkRow(before=before, now=target, outbox_id=outbox_id)

    async def store_notifications(
        self, new: NewNotifications, *, outbox_stream: str | None, outbox_event: bytes
    ) -> int | None:
        """Store a push's notifications in the next write transaction; with `outbox_stream`,
        `outbox_event` (the push's encoded bus event) goes to the outbox beside them: its
        entry id."""
        outbox_id: int | None = await self._write(
            partial(self._store_notifications, new, outbox_stream, outbox_event)
        )
        return outbox_id

    def _store_notifications(
        self,
        new: NewNotifications,
        outbox_stream: str | None,
        outbox_event: bytes,
        conn: sqlite3.Connection,
    ) -> int | None:
        stored_at = self._bind_time(new.created_at)
        conn.executemany(
            INSERT_NOTIFICATION,
            [
                (n_id, user_id, new.type, new.title, new.content, stored_at)
                for n_id, user_id in zip(new.ids, new.user_ids, strict=True)
            ],
        )
        if outbox_stream is None:
            return None
        return conn.execute(INSERT_OUTBOX, (outbox_stream, outbox_event, stored_at)).lastrowid

    async def _write(self, run: Callable[[sqlite3.Connection], T]) -> T:
        """`run(conn)` in the next write transaction, with the others queued meanwhile."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._writes.append(_Write(run, future))
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._write_queued())
        return await future

    async def _write_queued(self) -> None:
        try:
            while self._writes:
                batch, self._writes = self._writes[:WRITE_BATCH], self._writes[WRITE_BATCH:]
                try:
                    results = await self._run(self._transaction, [w.run for w in batch])
                except Exception as exc:
                    _fail_writes(batch, exc)
                    continue
                except BaseException:
                    _fail_writes(batch, Unavailable("storage closed"))
                    raise
                for write, (ok, result) in zip(batch, results, strict=True):
                    if write.future.done():
                        continue
                    if ok:
                        write.future.set_result(result)
                    else:
                        write.future.set_exception(result)
        finally:
            self._writer = None
            left, self._writes = self._writes, []
            _fail_writes(left, Unavailable("storage closed"))  # only when cancelled (close)

    def _transaction(
        self, batch: list[Callable[[sqlite3.Connection], Any]]
    ) -> list[tuple[bool, Any]]:
        """One transaction for the batch (on this path's thread): (True, result) or (False,
        the exception) for each. Each runs in a savepoint, so one that fails (a retry, a
        non-member) leaves nothing of its own and the others stored; an error of the
        transaction (the lock, the disk) fails them all, and nothing is stored."""
        conn = self._connection()
        results: list[tuple[bool, Any]] = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            for run in batch:
                conn.execute("SAVEPOINT write")
                try:
                    results.append((True, run(conn)))
                except (sqlite3.IntegrityError, DuplicateMessage) as exc:
                    conn.execute("ROLLBACK TO write")
                    results.append((False, exc))
                conn.execute("RELEASE write")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        self.transactions += 1
        return results

    # -- reads -----------------------------------------------------------------------------

    async def seqs_for_user(self, user_id: str) -> dict[str, int]:
        """{group_id: last_seq} of every group the user belongs to (reads batched:
        `UserSeqReads`)."""
        return await self._seqs.ask(user_id)

    async def _read_seqs(self, users: list[str]) -> SeqRows:
        """One statement for a batch of `UserSeqReads` (at most hotpath.SEQS_BATCH users)."""
        sql = SEQS_FOR_USERS.format(marks=", ".join("?" * len(users)))
        return await self._run(self._fetch, sql, tuple(users))

    async def messages_after(
        self, group_id: str, after_seq: int, limit: int
    ) -> list[dict[str, Any]]:
        """Up to `limit` messages of a group after `after_seq`, as `new_message` data."""
        rows = await self._run(self._fetch, MESSAGES_AFTER, (group_id, after_seq, limit))
        return [data for data, _ in self._messages(rows)]

    async def unread_for(
        self, user_id: str, limit: int, after: tuple[datetime, str] | None
    ) -> list[tuple[dict[str, Any], datetime]]:
        """Up to `limit` unread messages of the user, oldest first: (`new_message` data, its
        created_at for a cursor)."""
        params: tuple[Any, ...]
        if after is None:
            sql, params = UNREAD, (user_id, limit)
        else:
            sql, params = UNREAD_AFTER, (user_id, limit, self._bind_time(after[0]), after[1])
        return self._messages(await self._run(self._fetch, sql, params))

    def _messages(self, rows: list[tuple[Any, ...]]) -> list[tuple[dict[str, Any], datetime]]:
        """(`new_message` data, created_at) of rows whose columns are those of MESSAGES_AFTER."""
        found = []
        for row in rows:
            created_at = self._read_time(row[8])
            assert created_at is not None  # a NOT NULL column
            data = message_fields(
                row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], to_ms(created_at)
            )
            found.append((data, created_at))
        return found

    def _fetch(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        return self._connection().execute(sql, params).fetchall()

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise Unavailable("storage closed")
        return self._conn


def _filled(event: bytes, **data: Any) -> bytes:
    """An encoded bus event (`encode_entry`) with `data` set in its data: what the storing
    statement learnt (seq, time, the mark stored), as Postgres's jsonb_set fills it in."""
    entry = orjson.loads(event)
    entry["d"].update(data)
    return orjson.dumps(entry)


def _checkpoint_once(conn: sqlite3.Connection) -> None:
    """One passive checkpoint, its result row read to the end, so the statement holds no
    read transaction that would keep writers from starting the log over."""
    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()


def _fail_writes(writes: list[_Write], exc: BaseException) -> None:
    """Answer every caller in `writes` not answered yet with `exc`."""
    for write in writes:
        if not write.future.done():
            write.future.set_exception(exc)
