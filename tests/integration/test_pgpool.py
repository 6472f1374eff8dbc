"""The hot path's connection pool on the real Postgres: lending, waiting, giving up, breaking."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from app.db.base import NewMessage
from app.db.hotpath import DuplicateMessage, HotPath, asyncpg_dsn
from app.db.pgpool import LeanPool, PoolClosed
from app.errors import Unavailable

pytestmark = pytest.mark.postgres


@pytest.fixture
def dsn(pg_url: str) -> str:
    return asyncpg_dsn(pg_url)


@pytest.fixture
async def admin(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(dsn)
    yield connection
    await connection.close()


async def backend(connection: asyncpg.Connection) -> int:
    return int(await connection.fetchval("SELECT pg_backend_pid()"))


async def others(admin: asyncpg.Connection) -> list[int]:
    """Pids of this database's backends other than the admin connection's."""
    rows = await admin.fetch(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
        " AND pid <> pg_backend_pid() ORDER BY pid"
    )
    return [row[0] for row in rows]


async def make_group(admin: asyncpg.Connection, group_id: str, member: str) -> None:
    await admin.execute(
        "INSERT INTO groups (id, name, owner_id, last_seq, created_at)"
        " VALUES ($1, 'g', $2, 0, now())",
        group_id,
        member,
    )
    await admin.execute(
        "INSERT INTO group_members (group_id, user_id, role, joined_at)"
        " VALUES ($1, $2, 'owner', now())",
        group_id,
        member,
    )


def message(group_id: str, client_msg_id: str | None = None, msg_id: str = "m1") -> NewMessage:
    return NewMessage(msg_id, group_id, "bob", "Bob", 1, "hello", "", client_msg_id)


async def test_a_returned_connection_is_lent_again(dsn: str) -> None:
    pool = LeanPool(dsn, size=2)
    try:
        first = await pool.acquire()
        pid = await backend(first)
        pool.release(first)
        again = await pool.acquire()
        assert again is first and await backend(again) == pid
        assert (pool.open_connections, pool.idle_connections) == (1, 0)
        pool.release(again)
        assert (pool.open_connections, pool.idle_connections) == (1, 1)
    finally:
        await pool.close()
    assert pool.open_connections == 0 and first.is_closed()


async def test_callers_wait_in_turn_when_every_connection_is_lent(dsn: str) -> None:
    pool = LeanPool(dsn, size=2)
    try:
        a, b = await pool.acquire(), await pool.acquire()
        assert a is not b and await backend(a) != await backend(b)
        third = asyncio.create_task(pool.acquire())
        fourth = asyncio.create_task(pool.acquire())
        done, _ = await asyncio.wait({third, fourth}, timeout=0.2)
        assert not done and pool.open_connections == 2  # no third backend
        pool.release(b)
        assert await third is b  # first come, first served
        assert not fourth.done()
        pool.release(a)
        assert await fourth is a
        pool.release(a)
        pool.release(b)
        assert pool.open_connections == 2
    finally:
        await pool.close()


async def test_a_caller_that_gives_up_waiting_loses_no_connection(dsn: str) -> None:
    pool = LeanPool(dsn, size=1)
    try:
        lent = await pool.acquire()
        quitter = asyncio.create_task(pool.acquire())
        done, _ = await asyncio.wait({quitter}, timeout=0.1)
        assert not done
        quitter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await quitter
        pool.release(lent)
        assert await pool.acquire() is lent
        # Handed the connection, then cancelled before it ran: the connection comes back.
        late = asyncio.create_task(pool.acquire())
        done, _ = await asyncio.wait({late}, timeout=0.1)
        assert not done
        pool.release(lent)
        late.cancel()
        with pytest.raises(asyncio.CancelledError):
            await late
        assert (pool.open_connections, pool.idle_connections) == (1, 1)
        assert await pool.acquire() is lent
        pool.release(lent)
    finally:
        await pool.close()


async def test_close_refuses_new_callers_and_wakes_waiting_ones(dsn: str) -> None:
    pool = LeanPool(dsn, size=1)
    lent = await pool.acquire()
    waiting = asyncio.create_task(pool.acquire())
    done, _ = await asyncio.wait({waiting}, timeout=0.1)
    assert not done
    await pool.close()
    with pytest.raises(PoolClosed):
        await waiting
    with pytest.raises(PoolClosed):
        await pool.acquire()
    pool.release(lent)  # lent during the close: closed when it comes back
    await pool.close()  # waits for that close
    assert lent.is_closed() and pool.open_connections == 0


async def test_a_database_error_keeps_the_connection(dsn: str, admin: asyncpg.Connection) -> None:
    """An idempotent retry (a unique violation in the database) is an answer, not a broken
    connection: the next statement runs on the same backend."""
    await make_group(admin, "g1", "bob")
    hot = HotPath(dsn, size=1)
    await hot.start()
    try:
        stored = await hot.store_message(message("g1", "c1"), outbox_stream=None, outbox_event=b"")
        assert stored is not None and stored.seq == 1
        backends = await others(admin)
        with pytest.raises(DuplicateMessage):
            await hot.store_message(
                message("g1", "c1", msg_id="m2"), outbox_stream=None, outbox_event=b""
            )
        assert await hot.seqs_for_user("bob") == {"g1": 1}
        after = await others(admin)
        assert after == backends and len(after) == 1
    finally:
        await hot.close()


async def test_a_send_that_times_out_is_cancelled_in_the_database(
    dsn: str, admin: asyncpg.Connection
) -> None:
    """A store held behind a row lock past the deadline answers 503, and the database drops
    the statement: when the lock goes, nothing is stored behind the caller's back."""
    await make_group(admin, "g1", "bob")
    hot = HotPath(dsn, size=1, timeout=0.5)
    await hot.start()
    locker = await asyncpg.connect(dsn)
    try:
        lock = locker.transaction()
        await lock.start()
        await locker.execute("SELECT 1 FROM groups WHERE id = 'g1' FOR UPDATE")
        with pytest.raises(Unavailable):
            await hot.store_message(message("g1", "c1"), outbox_stream=None, outbox_event=b"")
        # The pool's one slot frees once the cancelled statement's connection has closed.
        assert await hot.seqs_for_user("bob") == {"g1": 0}
        waiting = await admin.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock'"
        )
        assert waiting == 0
        await lock.rollback()
        assert await admin.fetchval("SELECT count(*) FROM messages") == 0
        assert await admin.fetchval("SELECT last_seq FROM groups WHERE id = 'g1'") == 0
        stored = await hot.store_message(message("g1", "c1"), outbox_stream=None, outbox_event=b"")
        assert stored is not None and stored.seq == 1
    finally:
        await locker.close()
        await hot.close()


async def test_a_connection_killed_by_the_database_is_replaced(
    dsn: str, admin: asyncpg.Connection
) -> None:
    hot = HotPath(dsn, size=2)
    await hot.start()
    try:
        assert await hot.seqs_for_user("bob") == {}
        killed = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        assert killed == 1
        answers: list[object] = []
        for _ in range(3):
            try:
                answers.append(await hot.seqs_for_user("bob"))
            except Unavailable as exc:  # at most the statement that found it dead
                answers.append(exc)
        assert answers[-2:] == [{}, {}]
        assert sum(isinstance(a, Unavailable) for a in answers) <= 1
        alive = len(await others(admin))
        assert alive == 1
    finally:
        await hot.close()


async def test_many_callers_some_giving_up_share_a_few_connections(
    dsn: str, admin: asyncpg.Connection
) -> None:
    """300 statements from concurrent callers over 3 connections, every third caller
    cancelled at some point of its wait or statement: every other one gets its answer, the
    pool never opens a fourth backend, and it ends with its connections free and working."""
    await make_group(admin, "g1", "bob")
    pool = LeanPool(dsn, size=3)

    async def caller(n: int) -> int:
        connection = await pool.acquire()
        try:
            await backend(connection)
            value = await connection.fetchval("SELECT $1::int + 1", n)
        except BaseException:
            pool.discard(connection)
            raise
        pool.release(connection)
        return int(value)

    try:
        tasks = [asyncio.create_task(caller(n)) for n in range(300)]
        for turn, task in enumerate(tasks):
            if turn % 3 == 0:
                task.cancel()
            if turn % 10 == 0:
                await asyncio.sleep(0)  # let some of them start before the next cancels
        results = await asyncio.gather(*tasks, return_exceptions=True)
        failed = {n for n, r in enumerate(results) if isinstance(r, BaseException)}
        assert failed == set(range(0, 300, 3))
        assert all(isinstance(results[n], asyncio.CancelledError) for n in failed)
        assert all(results[n] == n + 1 for n in range(300) if n not in failed)
        assert await caller(41) == 42
        alive = len(await others(admin))
        assert alive <= 3 and pool.open_connections <= 3
    finally:
        await pool.close()
