"""Postgres under concurrency: gap-free seqs, idempotent retries, read marks that never go back."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import orjson
import pytest
from sqlalchemy import func, select

from app.bus.base import BusEvent
from app.bus.memory import InMemoryBus
from app.config import Settings
from app.db.base import NewMessage, NewNotifications
from app.db.hotpath import UNREAD, HotPath, MarkRow, asyncpg_dsn
from app.db.models import Message, OutboxEntry
from app.db.repositories.groups import GroupRepository
from app.db.repositories.read_marks import ReadMarkRepository
from app.db.session import make_engine, make_sessionmaker
from app.errors import NotMember, Unavailable
from app.schemas import events
from app.services import chat, groups
from app.services.context import ServiceContext
from app.services.outbox import OutboxRelay, decode_entry, encode_entry
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

pytestmark = pytest.mark.postgres


@pytest.fixture(params=["hotpath", "orm"])
async def ctx(
    request: pytest.FixtureRequest, pg_settings: Settings
) -> AsyncIterator[ServiceContext]:
    """The service's Postgres set-up (messages and auth reads on the asyncpg hot path), and
    the ORM-only path that SQLite uses, run on Postgres: both must give the same answers."""
    engine = make_engine(pg_settings.database_url, pool_size=pg_settings.DB_POOL_SIZE)
    hot = None
    if request.param == "hotpath":
        hot = HotPath(pg_settings.database_url, size=pg_settings.DB_POOL_SIZE)
        await hot.start()
    bus = InMemoryBus()
    await bus.connect()
    try:
        yield ServiceContext(
            settings=pg_settings, sessions=make_sessionmaker(engine), bus=bus, hot=hot
        )
    finally:
        await bus.disconnect()
        if hot is not None:
            await hot.close()
        await engine.dispose()


async def test_concurrent_sends_get_consecutive_seqs(ctx: ServiceContext) -> None:
    group_id = await new_group(ctx)
    events = ctx.bus.subscribe(ctx.settings.STREAM_MESSAGES)
    results = await asyncio.gather(
        *(send(ctx, group_id, MEMBERS[n % 5], f"m{n}") for n in range(50))
    )
    assert all(r.created for r in results)
    assert sorted(r.ack["seq"] for r in results) == list(range(1, 51))
    rows = await stored(ctx, group_id)
    assert [m.seq for m in rows] == list(range(1, 51))
    assert sorted(m.content for m in rows) == sorted(f"m{n}" for n in range(50))
    by_id = {m.id: m.seq for m in rows}
    assert all(by_id[r.ack["message_id"]] == r.ack["seq"] for r in results)
    last_seq = await groups.is_member(ctx, user_id="bob", group_id=group_id)
    assert last_seq == 50
    assert sorted(await take(events, 50, "seq")) == list(range(1, 51))


async def test_concurrent_sends_to_two_groups_do_not_share_seqs(ctx: ServiceContext) -> None:
    first, second = await new_group(ctx), await new_group(ctx)
    results = await asyncio.gather(
        *(send(ctx, (first, second)[n % 2], "bob", f"m{n}") for n in range(40))
    )
    for group_id in (first, second):
        seqs = sorted(r.ack["seq"] for r in results if r.ack["group_id"] == group_id)
        assert seqs == list(range(1, 21))


async def test_concurrent_retries_store_one_message(ctx: ServiceContext) -> None:
    group_id = await new_group(ctx)
    results = await asyncio.gather(
        *(send(ctx, group_id, "bob", "only once", client_id="c-1") for _ in range(20))
    )
    assert sum(r.created for r in results) == 1
    assert len({r.ack["message_id"] for r in results}) == 1
    assert {r.ack["seq"] for r in results} == {1}
    assert len({r.ack["created_at"] for r in results}) == 1
    rows = await stored(ctx, group_id)
    assert [(m.seq, m.content, m.client_msg_id) for m in rows] == [(1, "only once", "c-1")]
    # No seq was burnt by the losers of the race.
    assert (await send(ctx, group_id, "bob", "next")).ack["seq"] == 2


async def test_mixed_retries_and_new_messages_stay_gap_free(ctx: ServiceContext) -> None:
    group_id = await new_group(ctx)
    calls = [
        send(ctx, group_id, "carol", f"r{k}", client_id=f"k{k}") for k in range(5) for _ in range(4)
    ]
    calls += [send(ctx, group_id, MEMBERS[n % 5], f"u{n}") for n in range(10)]
    random.Random(7).shuffle(calls)
    results = await asyncio.gather(*calls)
    assert sum(r.created for r in results) == 15
    rows = await stored(ctx, group_id)
    assert [m.seq for m in rows] == list(range(1, 16))
    async with ctx.session() as session:
        per_key = await session.execute(
            select(Message.client_msg_id, func.count())
            .where(Message.group_id == group_id, Message.client_msg_id.is_not(None))
            .group_by(Message.client_msg_id)
        )
        assert dict(per_key.all()) == {f"k{k}": 1 for k in range(5)}
    for k in range(5):
        acks = {r.ack["message_id"] for r in results if r.message["content"] == f"r{k}"}
        assert len(acks) == 1


async def test_same_client_id_from_two_senders_stores_two(ctx: ServiceContext) -> None:
    group_id = await new_group(ctx)
    results = await asyncio.gather(
        *(send(ctx, group_id, user, "hi", client_id="same") for user in ("bob", "carol") * 5)
    )
    assert sum(r.created for r in results) == 2
    assert [m.sender_id for m in await stored(ctx, group_id)] in (
        ["bob", "carol"],
        ["carol", "bob"],
    )


async def test_read_mark_never_moves_backwards_under_concurrency(ctx: ServiceContext) -> None:
    group_id = await new_group(ctx)
    await asyncio.gather(*(send(ctx, group_id, "alice", f"m{n}") for n in range(30)))
    targets = [*range(31), 500, 17, 29, 3]
    random.Random(3).shuffle(targets)
    marks = await asyncio.gather(
        *(chat.mark_read(ctx, user_id="bob", group_id=group_id, seq=s) for s in targets)
    )
    for target, mark in zip(targets, marks, strict=True):
        assert mark >= min(target, 30)
        assert mark <= 30
    async with ctx.session() as session:
        assert await ReadMarkRepository(session).get(user_id="bob", group_id=group_id) == 30
    # Going lower afterwards changes nothing.
    lower = await asyncio.gather(
        *(chat.mark_read(ctx, user_id="bob", group_id=group_id, seq=s) for s in range(10))
    )
    assert set(lower) == {30}


async def test_read_marks_interleaved_with_sends(ctx: ServiceContext) -> None:
    group_id = await new_group(ctx)
    await send(ctx, group_id, "alice", "first")

    async def reader() -> list[int]:
        seen = []
        for seq in range(1, 25):
            seen.append(await chat.mark_read(ctx, user_id="bob", group_id=group_id, seq=seq))
        return seen

    reading = asyncio.create_task(reader())
    await asyncio.gather(*(send(ctx, group_id, "alice", f"m{n}") for n in range(20)))
    seen = await reading
    assert seen == sorted(seen), "the mark went backwards"
    assert seen[-1] <= 21
    final = await chat.mark_read(ctx, user_id="bob", group_id=group_id, seq=10_000)
    assert final == 21


async def test_read_marks_clamp_never_go_back_and_announce_only_moves(
    ctx: ServiceContext,
) -> None:
    await read_marks_clamp_never_go_back_and_announce_only_moves(ctx)


async def test_read_marks_store_their_read_updates_in_the_outbox(ctx: ServiceContext) -> None:
    await read_updates_in_the_outbox(ctx)


async def test_a_notification_push_stores_its_rows_and_outbox_entries(
    ctx: ServiceContext,
) -> None:
    await notifications_pushed_with_their_outbox_entries(ctx)


async def test_concurrent_marks_of_one_user_store_the_highest_and_announce_it(
    ctx: ServiceContext,
) -> None:
    """Two devices marking the same group at once: every answer is a mark that was stored,
    the last update announced is the mark stored, and no announcement goes backwards."""
    group_id = await new_group(ctx)
    for n in range(40):
        await send(ctx, group_id, "alice", f"m{n}")
    updates = ctx.bus.subscribe(ctx.settings.STREAM_EVENTS)
    targets = list(range(1, 41))
    random.Random(7).shuffle(targets)
    marks = await asyncio.gather(
        *(chat.mark_read(ctx, user_id="bob", group_id=group_id, seq=s) for s in targets)
    )
    assert all(t <= m <= 40 for t, m in zip(targets, marks, strict=True))
    assert max(marks) == 40
    async with ctx.session() as session:
        assert await ReadMarkRepository(session).get(user_id="bob", group_id=group_id) == 40
    # Updates arrive in the order their statements finished: the announced marks end at 40.
    announced: list[int] = []
    async with asyncio.timeout(10):
        async for event in updates:
            announced.append(event.data["last_read_seq"])
            if event.data["last_read_seq"] == 40:
                break
    assert announced and len(announced) <= len(targets)


# -- the asyncpg hot path against the ORM ------------------------------------------------------


@pytest.fixture
async def hot_ctx(pg_settings: Settings) -> AsyncIterator[ServiceContext]:
    """The service's own set-up on Postgres: hot path and the outbox on."""
    engine = make_engine(pg_settings.database_url, pool_size=4)
    sessions = make_sessionmaker(engine)
    hot = HotPath(pg_settings.database_url, size=4)
    await hot.start()
    bus = InMemoryBus()
    await bus.connect()
    relay = OutboxRelay(sessions, bus)  # not running: entries stay for the test to read
    try:
        yield ServiceContext(
            settings=pg_settings, sessions=sessions, bus=bus, outbox=relay, hot=hot
        )
    finally:
        await bus.disconnect()
        await hot.close()
        await engine.dispose()


async def test_hot_path_stores_what_the_orm_reads(hot_ctx: ServiceContext) -> None:
    ctx = hot_ctx
    assert ctx.hot is not None
    group_id, acks = await sent_and_read_back(ctx)
    # Replays and gap fills (the hot path's read) give the same frames.
    assert await ctx.hot.messages_after(group_id, 2, 3) == acks[2:5]
    assert await ctx.hot.messages_after(group_id, 6, 10) == []
    # Every stored message has its outbox entry, seq and created_at filled in.
    async with ctx.session() as session:
        entries = list(await session.scalars(select(OutboxEntry).order_by(OutboxEntry.id)))
    sent = [decode_entry(e.payload) for e in entries if e.stream == ctx.settings.STREAM_MESSAGES]
    assert [(e.kind, e.data) for e in sent] == [(events.MESSAGE, m) for m in acks]


async def test_hot_path_auth_read_matches_the_orm(hot_ctx: ServiceContext) -> None:
    ctx = hot_ctx
    assert ctx.hot is not None
    first, second = await new_group(ctx), await new_group(ctx)
    await send(ctx, second, "bob", "hello")
    async with ctx.session() as session:
        expected = await GroupRepository(session).seqs_for_user("bob")
    assert expected == {first: 0, second: 1}
    assert await ctx.hot.seqs_for_user("bob") == expected
    assert await ctx.hot.seqs_for_user("nobody") == {}


def counted_statements(hot: HotPath, monkeypatch: pytest.MonkeyPatch) -> Callable[[], int]:
    """From here on, count the statements `hot` runs (each takes a pooled connection)."""
    count = 0
    connection = hot._connection

    def counting() -> Any:
        nonlocal count
        count += 1
        return connection()

    monkeypatch.setattr(hot, "_connection", counting)
    return lambda: count


async def test_concurrent_auth_reads_share_statements(
    hot_ctx: ServiceContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reads asked while one is in flight go out together: 300 users (one asking twice, one
    in no group) take a few statements, and each caller gets its own user's groups."""
    ctx = hot_ctx
    hot = ctx.hot
    assert isinstance(hot, HotPath)
    users = [f"u{uuid.uuid4().hex[:6]}-{i}" for i in range(300)]
    made = [
        await groups.create_group(ctx, owner_id="alice", name="g", member_ids=users[i : i + 2])
        for i in range(0, 298, 2)
    ]
    expected = {user: {str(made[i // 2]["group_id"]): 0} for i, user in enumerate(users[:298])}
    expected |= {users[298]: {}, users[299]: {}}
    statements = counted_statements(hot, monkeypatch)
    asked = [*users, users[0]]
    answers = await asyncio.gather(*(hot.seqs_for_user(user) for user in asked))
    assert answers == [expected[user] for user in asked]
    assert answers[0] is not answers[-1], "a user asking twice gets two dicts"
    assert statements() <= 3, statements()
    assert hot._seqs.idle


async def test_a_failed_auth_read_fails_every_caller_and_the_next_reads_work(
    hot_ctx: ServiceContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    hot = hot_ctx.hot
    assert isinstance(hot, HotPath)
    group_id = await new_group(hot_ctx)
    pool = hot._pool
    hot._pool = None  # as before start(): every statement answers Unavailable
    results = await asyncio.gather(
        *(hot.seqs_for_user(user) for user in ("bob", "carol", "bob")), return_exceptions=True
    )
    assert [type(r) for r in results] == [Unavailable] * 3
    hot._pool = pool
    # A caller that goes away (its connection closed mid-auth) does not hold up the others.
    leaving = asyncio.ensure_future(hot.seqs_for_user("carol"))
    staying = asyncio.ensure_future(hot.seqs_for_user("bob"))
    await asyncio.sleep(0)
    leaving.cancel()
    assert (await staying)[group_id] == 0
    assert leaving.cancelled()
    assert hot._seqs.idle


async def test_hot_path_refuses_non_members_and_stores_nothing(hot_ctx: ServiceContext) -> None:
    group_id = await new_group(hot_ctx)
    with pytest.raises(NotMember):
        await send(hot_ctx, group_id, "mallory", "let me in")
    with pytest.raises(NotMember):
        await send(hot_ctx, "no-such-group", "bob", "anyone?")
    assert await stored(hot_ctx, group_id) == []
    assert (await send(hot_ctx, group_id, "bob", "first")).ack["seq"] == 1


async def test_a_mark_that_does_not_move_writes_nothing(hot_ctx: ServiceContext) -> None:
    """A mark at or below the stored one (what a client sends again and again) is a read: the
    row keeps its version, so the statement waits for no commit to reach the disk."""
    ctx = hot_ctx
    group_id = await new_group(ctx)
    for n in range(3):
        await send(ctx, group_id, "alice", f"m{n}")
    assert await chat.mark_read(ctx, user_id="bob", group_id=group_id, seq=2) == 2
    connection = await asyncpg.connect(asyncpg_dsn(ctx.settings.database_url))
    try:
        version = "SELECT xmin::text FROM read_marks WHERE user_id = 'bob' AND group_id = $1"
        before = await connection.fetchval(version, group_id)
        assert await chat.mark_read(ctx, user_id="bob", group_id=group_id, seq=2) == 2
        assert await chat.mark_read(ctx, user_id="bob", group_id=group_id, seq=1) == 2
        assert await connection.fetchval(version, group_id) == before
        assert await chat.mark_read(ctx, user_id="bob", group_id=group_id, seq=3) == 3
        assert await connection.fetchval(version, group_id) != before
    finally:
        await connection.close()


async def test_marks_asked_together_share_statements_and_each_gets_its_own_entry(
    hot_ctx: ServiceContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """200 users marking at once (one of them twice, one a non-member) take a few statements;
    each gets its own answer, and each outbox id it is told is the entry of its own update."""
    ctx = hot_ctx
    hot = ctx.hot
    assert isinstance(hot, HotPath)
    users = [f"u{uuid.uuid4().hex[:6]}-{i}" for i in range(200)]
    group_id = await new_group(ctx, ["alice", *users])
    for n in range(5):
        await send(ctx, group_id, "alice", f"m{n}")
    statements = counted_statements(hot, monkeypatch)
    seqs = {user: 1 + i % 5 for i, user in enumerate(users)}
    data = {
        user: events.read_event(user_id=user, group_id=group_id, last_read_seq=0, origin=user)
        for user in users
    }
    asked = [(user, seqs[user]) for user in users] + [(users[0], 5), ("mallory", 3)]
    rows = await asyncio.gather(
        *(
            hot.advance_read_mark(
                user,
                group_id,
                seq,
                outbox_stream=ctx.settings.STREAM_EVENTS,
                outbox_event=encode_entry(BusEvent(events.READ, data[user]))
                if user in data
                else b"{}",
            )
            for user, seq in asked
        )
    )
    assert statements() <= 3, statements()
    assert hot._marks.idle
    assert rows[-1] is None, "mallory is not a member"
    # users[0] asked 1 and 5 in one batch: one entry (5), moved by the caller of 5; the
    # caller of 1 is told the mark stored, and announces nothing.
    assert rows[0] == MarkRow(before=5, now=5, outbox_id=None)
    again = rows[-2]
    assert again is not None and again.moved and (again.before, again.now) == (0, 5)
    by_user = dict(zip(users[1:], rows[1:200], strict=True))
    assert all(r is not None and (r.before, r.now) == (0, seqs[u]) for u, r in by_user.items())
    async with ctx.session() as session:
        entries = {
            e.id: decode_entry(e.payload)
            for e in await session.scalars(
                select(OutboxEntry).where(OutboxEntry.stream == ctx.settings.STREAM_EVENTS)
            )
            if decode_entry(e.payload).kind == events.READ
            and decode_entry(e.payload).data["group_id"] == group_id
        }
        for user in users:
            assert await ReadMarkRepository(session).get(user_id=user, group_id=group_id) == (
                5 if user == users[0] else seqs[user]
            )
    told = {u: r.outbox_id for u, r in by_user.items() if r is not None}
    told[users[0]] = again.outbox_id
    assert len(entries) == 200
    for user, outbox_id in told.items():
        assert outbox_id is not None
        assert entries[outbox_id].data == {
            **data[user],
            "last_read_seq": 5 if user == users[0] else seqs[user],
        }


async def test_an_entry_that_fails_its_batch_fails_alone(hot_ctx: ServiceContext) -> None:
    """A mark the database refuses (here a trigger refusing one user's row) fails the batch's
    statement; the batch's other marks are then written one by one and stored."""
    ctx = hot_ctx
    poison = f"poison-{uuid.uuid4().hex[:8]}"
    group_id = await new_group(ctx, ["alice", "bob", "carol", poison])
    await send(ctx, group_id, "alice", "m0")
    connection = await asyncpg.connect(asyncpg_dsn(ctx.settings.database_url))
    trigger = f"refuse_{poison.replace('-', '_')}"
    try:
        await connection.execute(
            f"""CREATE FUNCTION {trigger}() RETURNS trigger AS $$
                BEGIN
                    IF NEW.user_id = '{poison}' THEN RAISE EXCEPTION 'refused'; END IF;
                    RETURN NEW;
                END $$ LANGUAGE plpgsql;
                CREATE TRIGGER {trigger} BEFORE INSERT OR UPDATE ON read_marks
                FOR EACH ROW EXECUTE FUNCTION {trigger}();"""
        )
        results = await asyncio.gather(
            *(
                chat.mark_read(ctx, user_id=user, group_id=group_id, seq=1)
                for user in ("bob", poison, "carol")
            ),
            return_exceptions=True,
        )
    finally:
        await connection.execute(f"DROP TRIGGER {trigger} ON read_marks; DROP FUNCTION {trigger}()")
        await connection.close()
    assert results[0] == 1 and results[2] == 1
    assert isinstance(results[1], asyncpg.RaiseError)
    async with ctx.session() as session:
        marks = ReadMarkRepository(session)
        assert await marks.get(user_id="bob", group_id=group_id) == 1
        assert await marks.get(user_id="carol", group_id=group_id) == 1
        assert await marks.get(user_id=poison, group_id=group_id) == 0


async def test_hot_path_outage_is_unavailable(unused_tcp_port: int) -> None:
    idle = HotPath(f"postgresql://postgres@127.0.0.1:{unused_tcp_port}/test", size=2)
    with pytest.raises(Unavailable):  # not started
        await idle.seqs_for_user("bob")
    await idle.start()  # no connection is opened before the first statement
    try:
        for call in (
            idle.seqs_for_user("bob"),
            idle.messages_after("g", 0, 10),
            idle.store_message(
                NewMessage("m", "g", "bob", "Bob", 1, "x", "", None),
                outbox_stream=None,
                outbox_event=b"",
            ),
            idle.advance_read_mark("bob", "g", 1),
            idle.store_notifications(
                NewNotifications.push(["bob"], type="t", title="T", content=""),
                outbox_stream=None,
                outbox_event=b"",
            ),
        ):
            with pytest.raises(Unavailable):
                await call
    finally:
        await idle.close()


def plan_rows(node: dict[str, Any]) -> int:
    """Rows an EXPLAIN ANALYZE plan node and its children produced or filtered out."""
    own = int(node.get("Actual Rows", 0) * node.get("Actual Loops", 1))
    own += int(node.get("Rows Removed by Filter", 0) + node.get("Rows Removed by Join Filter", 0))
    return own + sum(plan_rows(child) for child in node.get("Plans", ()))


async def test_offline_read_does_not_walk_other_groups_history(hot_ctx: ServiceContext) -> None:
    """The offline fetch's work follows the reader's unread messages: 20,000 older messages of
    a group the reader is not in are never visited (they once were, one by one: with few
    groups, each with a long history, the planner walked the whole table by created_at)."""
    ctx = hot_ctx
    assert ctx.hot is not None
    reader = f"reader-{uuid.uuid4().hex[:8]}"
    mine = await groups.create_group(ctx, owner_id="alice", name="g", member_ids=[reader])
    other = uuid.uuid4().hex[:12]
    connection = await asyncpg.connect(asyncpg_dsn(ctx.settings.database_url))
    try:
        await connection.execute(
            "INSERT INTO groups (id, name, owner_id, last_seq, created_at)"
            " VALUES ($1, 'old', 'alice', 20000, now())",
            other,
        )
        await connection.execute(
            """INSERT INTO messages (id, group_id, seq, sender_id, sender_name, msg_type,
                                     content, image_url, created_at)
               SELECT $1 || '-' || i, $1, i, 'bob', 'Bob', 1, 'old', '',
                      now() - interval '1 hour' + i * interval '1 ms'
               FROM generate_series(1, 20000) i""",
            other,
        )
        await connection.execute("ANALYZE messages")
        sent = [
            (await send(ctx, str(mine["group_id"]), "alice", f"m{n}")).message for n in range(3)
        ]
        found = await ctx.hot.unread_for(reader, 51, None)
        assert [data for data, _ in found] == sent
        plan = await connection.fetchval("EXPLAIN (ANALYZE, FORMAT JSON) " + UNREAD, reader, 51)
    finally:
        await connection.close()
    assert plan_rows(orjson.loads(plan)[0]["Plan"]) < 200, plan


async def test_hot_path_gives_up_on_a_database_that_never_answers() -> None:
    """One deadline bounds the wait for a connection and the statement: a server that
    accepts and then says nothing gets Unavailable, not a request that hangs."""
    accepted: list[asyncio.StreamWriter] = []

    async def silent(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    hot = HotPath(f"postgresql://postgres@127.0.0.1:{port}/test", size=2, timeout=0.3)
    await hot.start()
    try:
        async with asyncio.timeout(5):
            with pytest.raises(Unavailable):
                await hot.seqs_for_user("bob")
        assert accepted  # it did reach the server, which never answered
    finally:
        await hot.close()
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()
