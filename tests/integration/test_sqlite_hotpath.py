"""Embedded mode's send and auth path on SQLite: sends that arrive together share a commit,
seqs stay gap-free, retries stay idempotent, and the engine's own writes go on beside it."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.bus.memory import InMemoryBus
from app.config import Settings
from app.db.base import NewMessage
from app.db.migrate import upgrade_async
from app.db.models import OutboxEntry
from app.db.repositories.cursor import decode_cursor, encode_cursor
from app.db.repositories.groups import GroupRepository
from app.db.repositories.messages import MessageRepository
from app.db.session import make_engine, make_sessionmaker
from app.db.sqlite_hotpath import UNREAD, UNREAD_AFTER, SqliteHotPath, sqlite_file
from app.errors import NotMember, Unavailable
from app.main import create_app
from app.schemas import events
from app.services import chat, groups
from app.services.chat import SendResult
from app.services.context import ServiceContext
from app.services.outbox import OutboxRelay, decode_entry
from tests.support.chat import (
    MEMBERS,
    new_group,
    notifications_pushed_with_their_outbox_entries,
    read_marks_clamp_never_go_back_and_announce_only_moves,
    read_updates_in_the_outbox,
    send,
    sent_and_read_back,
    stored,
    take,
)
from tests.support.tokens import SECRET, bearer, token


@contextlib.asynccontextmanager
async def embedded(
    path: Path, *, busy_timeout: float = 30.0, checkpoint_every: float = 1.0
) -> AsyncIterator[ServiceContext]:
    """Embedded mode's storage on a migrated SQLite file: the engine, the path, the bus."""
    settings = Settings(SQLITE_PATH=str(path), JWT_SECRET=SECRET, _env_file=None)
    await upgrade_async(settings.database_url)
    engine = make_engine(settings.database_url)
    hot = SqliteHotPath(
        str(path), engine.dialect, busy_timeout=busy_timeout, checkpoint_every=checkpoint_every
    )
    await hot.start()
    bus = InMemoryBus()
    await bus.connect()
    try:
        yield ServiceContext(
            settings=settings, sessions=make_sessionmaker(engine), bus=bus, hot=hot
        )
    finally:
        await bus.disconnect()
        await hot.close()  # again after a test closed it: nothing to do
        await engine.dispose()


@pytest.fixture
async def ctx(tmp_path: Path) -> AsyncIterator[ServiceContext]:
    async with embedded(tmp_path / "hot.db") as ctx:
        yield ctx


def hot(ctx: ServiceContext) -> SqliteHotPath:
    assert isinstance(ctx.hot, SqliteHotPath)
    return ctx.hot


async def test_sends_arriving_together_share_a_commit_and_get_consecutive_seqs(
    ctx: ServiceContext,
) -> None:
    group_id = await new_group(ctx)
    published = ctx.bus.subscribe(ctx.settings.STREAM_MESSAGES)
    before = hot(ctx).transactions
    results = await asyncio.gather(
        *(send(ctx, group_id, MEMBERS[n % 5], f"m{n}") for n in range(200))
    )
    assert hot(ctx).transactions - before <= 3  # not one per send
    assert sorted(r.ack["seq"] for r in results) == list(range(1, 201))
    rows = await stored(ctx, group_id)
    assert [m.seq for m in rows] == list(range(1, 201))
    by_id = {m.id: (m.seq, m.content) for m in rows}
    assert all(by_id[r.ack["message_id"]] == (r.ack["seq"], r.message["content"]) for r in results)
    assert await groups.is_member(ctx, user_id="bob", group_id=group_id) == 200
    assert sorted(await take(published, 200, "seq")) == list(range(1, 201))


async def test_what_the_orm_reads_is_what_the_send_answered(ctx: ServiceContext) -> None:
    group_id, acks = await sent_and_read_back(ctx)
    assert await hot(ctx).messages_after(group_id, 2, 3) == acks[2:5]
    assert await hot(ctx).messages_after(group_id, 6, 10) == []


async def test_retries_in_one_batch_store_one_message(ctx: ServiceContext) -> None:
    group_id = await new_group(ctx)
    results = await asyncio.gather(
        *(send(ctx, group_id, "bob", "once", client_id="retry-1") for _ in range(10)),
        *(send(ctx, group_id, "carol", f"other {n}") for n in range(10)),
    )
    retries, others = results[:10], results[10:]
    assert sum(r.created for r in retries) == 1
    assert len({(r.ack["message_id"], r.ack["seq"]) for r in retries}) == 1
    assert all(r.created for r in others)
    rows = await stored(ctx, group_id)
    assert [m.seq for m in rows] == list(range(1, 12))  # gap-free: no seq spent on a retry
    assert [m.content for m in rows].count("once") == 1
    # A retry after the batch answers the stored message too.
    again = await send(ctx, group_id, "bob", "once", client_id="retry-1")
    assert not again.created and again.ack == retries[0].ack


async def test_same_client_id_from_two_senders_stores_two(ctx: ServiceContext) -> None:
    group_id = await new_group(ctx)
    first, second = await asyncio.gather(
        send(ctx, group_id, "alice", "a", client_id="same"),
        send(ctx, group_id, "bob", "b", client_id="same"),
    )
    assert first.created and second.created
    assert {first.ack["seq"], second.ack["seq"]} == {1, 2}


async def test_a_non_member_in_a_batch_stores_nothing_and_the_others_are_stored(
    ctx: ServiceContext,
) -> None:
    group_id = await new_group(ctx)
    results = await asyncio.gather(
        send(ctx, group_id, "alice", "1"),
        send(ctx, group_id, "mallory", "intruder"),
        send(ctx, "no-such-group", "alice", "lost"),
        send(ctx, group_id, "bob", "2"),
        return_exceptions=True,
    )
    assert isinstance(results[1], NotMember) and isinstance(results[2], NotMember)
    assert [r.ack["seq"] for r in results if isinstance(r, SendResult)] == [1, 2]
    assert [m.content for m in await stored(ctx, group_id)] == ["1", "2"]


async def test_unread_pages_match_the_orm(ctx: ServiceContext) -> None:
    first, second = await new_group(ctx), await new_group(ctx, ["carol", "bob"])
    quiet = await new_group(ctx, ["dave", "erin"])  # bob is not in it
    for n in range(7):
        await send(ctx, first, MEMBERS[n % 5], f"first {n}")  # bob sends n = 1 and 6
        await send(ctx, second, "carol", f"second {n}")
        await send(ctx, quiet, "dave", f"quiet {n}")
    await chat.mark_read(ctx, user_id="bob", group_id=first, seq=3)
    # By the ORM (what SQLite used before): every page with its cursor.
    orm_pages = []
    cursor = None
    while True:
        async with ctx.session() as session:
            rows = await MessageRepository(session).unread_for(
                user_id="bob", limit=4, after=decode_cursor(cursor) if cursor else None
            )
        orm_pages.append([events.message_data(m) for m in rows])
        if len(rows) < 4:
            break
        cursor = encode_cursor(rows[-1].created_at, rows[-1].id)
    unread = [m for page in orm_pages for m in page]
    assert {m["group_id"] for m in unread} == {first, second}
    assert all(m["sender_id"] != "bob" for m in unread)
    assert [m["seq"] for m in unread if m["group_id"] == first] == [4, 5, 6]  # 7 is bob's
    assert len(unread) == 3 + 7
    # The same pages through the service, which reads them on the hot path.
    pages = []
    cursor = None
    while True:
        page, cursor = await chat.unread(ctx, user_id="bob", limit=4, cursor=cursor)
        pages.append(page)
        if cursor is None:
            break
    assert pages == orm_pages
    assert await chat.unread(ctx, user_id="nobody", limit=4, cursor=None) == ([], None)


def test_the_unread_read_starts_from_the_callers_read_marks(tmp_path: Path) -> None:
    """The query plan: memberships, then read marks, then each group's messages from past
    the mark (an index range), never a scan of a table."""
    path = tmp_path / "plan.db"
    asyncio.run(upgrade_async(f"sqlite+aiosqlite:///{path}"))
    with contextlib.closing(sqlite3.connect(path)) as conn:
        for sql, params in ((UNREAD, ("bob", 10)), (UNREAD_AFTER, ("bob", 10, "2026", "x"))):
            plan = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, params)]
            assert plan[0].startswith("SEARCH gm USING INDEX"), plan
            assert plan[1].startswith("SEARCH r USING"), plan
            assert plan[2].startswith("SEARCH m USING") and "seq>?" in plan[2], plan
            assert not any(step.startswith("SCAN") for step in plan), plan


async def test_read_marks_clamp_never_go_back_and_announce_only_moves(
    ctx: ServiceContext,
) -> None:
    await read_marks_clamp_never_go_back_and_announce_only_moves(ctx)


async def test_read_marks_and_sends_in_one_batch_keep_their_order(ctx: ServiceContext) -> None:
    group_id = await new_group(ctx)
    before = hot(ctx).transactions
    results = await asyncio.gather(
        send(ctx, group_id, "alice", "1"),
        chat.mark_read(ctx, user_id="bob", group_id=group_id, seq=5),  # after seq 1 only
        send(ctx, group_id, "alice", "2"),
        chat.mark_read(ctx, user_id="carol", group_id=group_id, seq=5),  # after both
        chat.mark_read(ctx, user_id="mallory", group_id=group_id, seq=5),
        return_exceptions=True,
    )
    assert hot(ctx).transactions - before == 1
    assert results[1] == 1 and results[3] == 2 and isinstance(results[4], NotMember)


async def test_auth_reads_match_the_orm_and_share_statements(
    ctx: ServiceContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = await new_group(ctx), await new_group(ctx, ["bob", "carol"])
    await send(ctx, second, "bob", "hello")
    async with ctx.session() as session:
        expected = await GroupRepository(session).seqs_for_user("bob")
    assert expected == {first: 0, second: 1}
    path = hot(ctx)
    statements: list[int] = []
    fetch = path._fetch

    def counted(sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        if "m.user_id IN" in sql:  # the auth group read
            statements.append(len(params))
        return fetch(sql, params)

    monkeypatch.setattr(path, "_fetch", counted)
    users = ["bob", "nobody", *MEMBERS] * 40  # 280 asks, 6 distinct users
    found = await asyncio.gather(*(groups.group_seqs(ctx, user_id=u) for u in users))
    assert len(statements) <= 2 and sum(statements) <= 12
    assert all(f == expected for u, f in zip(users, found, strict=True) if u == "bob")
    assert all(f == {} for u, f in zip(users, found, strict=True) if u == "nobody")
    assert all(f == {first: 0} for u, f in zip(users, found, strict=True) if u == "erin")
    # Each caller gets a map of its own: changing one changes no other's.
    bobs = [f for u, f in zip(users, found, strict=True) if u == "bob"]
    bobs[0]["x"] = 1
    assert "x" not in bobs[1]


async def test_engine_writes_beside_the_hot_path_neither_fails(ctx: ServiceContext) -> None:
    group_id = await new_group(ctx)

    async def join_and_read(n: int) -> None:
        await groups.add_member(ctx, caller_id="alice", group_id=group_id, user_id=f"u{n}")
        await chat.mark_read(ctx, user_id="bob", group_id=group_id, seq=1)

    sends = [send(ctx, group_id, MEMBERS[n % 5], f"m{n}") for n in range(100)]
    results, _ = await asyncio.gather(
        asyncio.gather(*sends), asyncio.gather(*(join_and_read(n) for n in range(20)))
    )
    assert sorted(r.ack["seq"] for r in results) == list(range(1, 101))
    async with ctx.session() as session:
        members = await GroupRepository(session).member_ids(group_id)
    assert len(members) == 25


async def test_a_locked_database_fails_the_batch_and_the_next_one_stores(
    tmp_path: Path,
) -> None:
    async with embedded(tmp_path / "locked.db", busy_timeout=0.2) as ctx:
        group_id = await new_group(ctx)
        blocker = sqlite3.connect(tmp_path / "locked.db", isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # another writer that does not let go
        results = await asyncio.gather(
            send(ctx, group_id, "alice", "a"),
            send(ctx, group_id, "bob", "b"),
            return_exceptions=True,
        )
        assert all(isinstance(r, Unavailable) for r in results)
        blocker.execute("ROLLBACK")
        blocker.close()
        assert await stored(ctx, group_id) == []
        after = await send(ctx, group_id, "alice", "after")
        assert after.ack["seq"] == 1  # the failed batch spent no seq


def message(group_id: str, n: int, content: str) -> NewMessage:
    return NewMessage(
        id=f"00000000-0000-0000-0000-{n:012d}",
        group_id=group_id,
        sender_id="alice",
        sender_name="Alice",
        msg_type=1,
        content=content,
        image_url="",
        client_msg_id=None,
    )


async def test_close_answers_the_sends_still_waiting(tmp_path: Path) -> None:
    async with embedded(tmp_path / "closing.db") as ctx:
        group_id = await new_group(ctx)
        path = hot(ctx)
        pending = [
            asyncio.ensure_future(path.store_message(message(group_id, n, str(n))))
            for n in range(5)
        ]
        await asyncio.sleep(0)  # the sends are queued and the writer has started
        await path.close()
        async with asyncio.timeout(5):
            results = await asyncio.gather(*pending, return_exceptions=True)
        assert all(isinstance(r, Unavailable) for r in results)
        with pytest.raises(Unavailable):
            await path.seqs_for_user("alice")


def in_main_file(path: Path, copy: Path) -> int:
    """Messages in the database file itself, without its write-ahead log: what checkpoints
    have copied there."""
    shutil.copyfile(path, copy)
    with contextlib.closing(sqlite3.connect(copy)) as conn:
        return int(conn.execute("SELECT count(*) FROM messages").fetchone()[0])


async def test_commits_leave_checkpoints_to_the_checkpointer(tmp_path: Path) -> None:
    # Without the checkpointer (an interval longer than the test), 1,500 messages of 4 KB
    # (~1,600 pages, past SQLite's automatic checkpoint at 1,000) stay in the log: no commit
    # copied them into the database file.
    path = tmp_path / "wal.db"
    async with embedded(path, checkpoint_every=3600) as ctx:
        group_id = await new_group(ctx)
        await asyncio.gather(
            *(hot(ctx).store_message(message(group_id, n, "x" * 4000)) for n in range(1500))
        )
        assert in_main_file(path, tmp_path / "copy1.db") == 0
    # With it, the checkpoints run beside the writes and copy them.
    async with embedded(path, checkpoint_every=0.05) as ctx:
        group_id = await new_group(ctx)
        await asyncio.gather(
            *(hot(ctx).store_message(message(group_id, 10_000 + n, "y")) for n in range(50))
        )
        start = hot(ctx).checkpoints
        async with asyncio.timeout(10):
            while hot(ctx).checkpoints < start + 2:  # one that began after the last commit
                await asyncio.sleep(0.05)
        assert in_main_file(path, tmp_path / "copy2.db") == 1550


def test_only_a_database_in_a_file_takes_the_hot_path() -> None:
    assert sqlite_file("/tmp/campushub.db") and sqlite_file("campushub.db")
    assert not sqlite_file(":memory:") and not sqlite_file("") and not sqlite_file(None)
    assert not sqlite_file("file:shared?mode=memory&cache=shared")


def test_embedded_service_stores_and_authenticates_through_the_hot_path(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    transaction, read_seqs = SqliteHotPath._transaction, SqliteHotPath._read_seqs

    def counted_write(self: SqliteHotPath, batch: list[Any]) -> list[tuple[bool, Any]]:
        calls.append("write")
        return transaction(self, batch)

    async def counted_read(self: SqliteHotPath, users: list[str]) -> Any:
        calls.append("seqs")
        return await read_seqs(self, users)

    monkeypatch.setattr(SqliteHotPath, "_transaction", counted_write)
    monkeypatch.setattr(SqliteHotPath, "_read_seqs", counted_read)
    with TestClient(create_app(settings)) as client:
        created = client.post(
            "/api/v1/groups", json={"name": "g", "member_ids": ["bob"]}, headers=bearer("alice")
        )
        group_id = created.json()["group_id"]
        sent = client.post(
            f"/api/v1/groups/{group_id}/messages",
            json={"msg_type": 1, "content": "hi"},
            headers=bearer("alice"),
        )
        assert sent.status_code == 201 and sent.json()["seq"] == 1
        with client.websocket_connect("/ws") as ws:
            ws.send_json({"type": "auth", "message_id": "a", "data": {"token": token("bob")}})
            reply = ws.receive_json()
            assert reply["type"] == "auth_success" and reply["data"]["groups"] == [group_id]
        marked = client.post(
            f"/api/v1/groups/{group_id}/read", json={"seq": 5}, headers=bearer("bob")
        )
        assert marked.status_code == 200 and marked.json()["last_read_seq"] == 1
    assert calls == ["write", "seqs", "write"]


async def test_beside_a_redis_bus_each_send_and_mark_stores_its_outbox_entry(
    tmp_path: Path,
) -> None:
    """SQLite with REDIS_URL set: the outbox is on, and the path stores each message's entry
    in the same transaction, seq and created_at filled in (a retry stores none), and each
    read mark that moves its read update."""
    async with embedded(tmp_path / "outbox.db") as ctx:
        ctx.outbox = OutboxRelay(ctx.sessions, ctx.bus)  # not running: entries stay to be read
        group_id, acks = await sent_and_read_back(ctx)
        again = await send(ctx, group_id, "alice", "m0 ünïcode", client_id="c0")
        assert not again.created
        async with ctx.session() as session:
            entries = list(await session.scalars(select(OutboxEntry).order_by(OutboxEntry.id)))
        sent = [
            decode_entry(e.payload) for e in entries if e.stream == ctx.settings.STREAM_MESSAGES
        ]
        assert [(e.kind, e.data) for e in sent] == [(events.MESSAGE, m) for m in acks]
        await read_updates_in_the_outbox(ctx)


async def test_a_notification_push_stores_its_rows_and_outbox_entries(tmp_path: Path) -> None:
    async with embedded(tmp_path / "notes.db") as ctx:
        await notifications_pushed_with_their_outbox_entries(ctx)


@pytest.mark.redis
def test_sqlite_with_redis_sends_and_marks_through_rest(settings: Settings, redis_url: str) -> None:
    with TestClient(create_app(settings.model_copy(update={"REDIS_URL": redis_url}))) as client:
        created = client.post(
            "/api/v1/groups", json={"name": "g", "member_ids": ["bob"]}, headers=bearer("alice")
        )
        group_id = created.json()["group_id"]
        for n in range(3):
            sent = client.post(
                f"/api/v1/groups/{group_id}/messages",
                json={"msg_type": 1, "content": f"m{n}"},
                headers=bearer("alice"),
            )
            assert sent.status_code == 201 and sent.json()["seq"] == n + 1, sent.text
        marked = client.post(
            f"/api/v1/groups/{group_id}/read", json={"seq": 2}, headers=bearer("bob")
        )
        assert marked.status_code == 200 and marked.json()["last_read_seq"] == 2
        offline = client.get("/api/v1/messages/offline", headers=bearer("bob"))
        assert [m["seq"] for m in offline.json()["items"]] == [3]
