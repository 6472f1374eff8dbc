"""One async function per client frame type; each calls services and replies on `conn`."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from app import metrics
from app.config import Settings
from app.errors import BadRequest, NotAuthenticated, NotMember, RateLimited
from app.realtime import frames
from app.realtime.connection import CLOSE_POLICY, Connection, ConnState
from app.realtime.frames import ClientFrame, field_int, field_str
from app.realtime.hub import Hub
from app.realtime.pacing import TurnPacer
from app.realtime.presence import Presence, PresenceWrites
from app.realtime.ratelimit import TokenBuckets
from app.security import decode_token
from app.services import chat, groups
from app.services.chat import Sender
from app.services.context import ServiceContext

log = logging.getLogger("app.realtime")
clock = time.monotonic  # replaceable in tests
CLEANUPS_PER_TURN = 64  # ~5 ms of loop time per turn when many clients leave at once


class ConnectionMeters:
    """The metric children every connection's reader updates, looked up once per instance
    (a `labels()` lookup per connection was ~1 % of a connect's CPU)."""

    __slots__ = ("duration", "receive_errors", "received", "send_errors")

    def __init__(self, service: str) -> None:
        self.received = metrics.MESSAGES.labels("receive", service)
        self.duration = metrics.MESSAGE_DURATION.labels("receive", service)
        self.receive_errors = metrics.ERRORS.labels("receive", service)
        self.send_errors = metrics.ERRORS.labels("send", service)


@dataclass(slots=True)
class Runtime:
    """What handlers share across connections of this instance."""

    ctx: ServiceContext
    hub: Hub
    presence: Presence
    send_buckets: TokenBuckets
    presence_writes: PresenceWrites = field(init=False)
    meters: ConnectionMeters = field(init=False)
    # Readers whose peer has gone clean up at most this many per loop turn (see TurnPacer).
    closing: TurnPacer = field(init=False)

    def __post_init__(self) -> None:
        self.presence_writes = PresenceWrites(self.presence)
        self.meters = ConnectionMeters(self.ctx.settings.SERVICE_NAME)
        self.closing = TurnPacer(CLEANUPS_PER_TURN)

    @property
    def settings(self) -> Settings:
        return self.ctx.settings


@dataclass(slots=True)
class Session:
    """Per-connection handler state beyond the Connection itself."""

    conn: Connection
    rt: Runtime
    auth_failures: int = 0
    last_heartbeat: float = 0.0  # monotonic time of this connection's last presence refresh

    def reply(self, type: str, frame: ClientFrame, data: dict[str, Any]) -> None:
        self.conn.push_replay(frames.encode(type, data, message_id=frame.message_id))


Handler = Callable[[Session, ClientFrame], Awaitable[None]]


async def on_ping(s: Session, frame: ClientFrame) -> None:
    s.conn.push_replay(
        frames.encode(
            "pong",
            {"server_time": frames.now_ms()},
            message_id=frame.message_id,
            timestamp=frame.timestamp if frame.timestamp is not None else frames.now_ms(),
        )
    )
    # A JSON ping refreshes presence, at most a few times per TTL: the instance's heartbeat
    # task refreshes every connection anyway, so a write per ping would be work done twice.
    now = clock()
    if s.conn.user_id is not None and now - s.last_heartbeat >= s.rt.settings.PRESENCE_TTL / 3:
        s.last_heartbeat = now
        await s.rt.presence.heartbeat([(s.conn.user_id, s.conn.id)])


def _parse_resume(data: dict[str, Any]) -> dict[str, int]:
    resume = data.get("resume")
    if resume is None:
        return {}
    if not isinstance(resume, dict):
        raise BadRequest("resume must be an object of group_id → last seen seq")
    parsed: dict[str, int] = {}
    for group_id, seq in resume.items():
        if len(group_id) > 64 or isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
            raise BadRequest("resume must map group ids to non-negative integer seqs")
        parsed[group_id] = seq
    return parsed


async def on_auth(s: Session, frame: ClientFrame) -> None:
    conn, settings = s.conn, s.rt.settings
    token = frame.data.get("token")
    resume = _parse_resume(frame.data)
    try:
        claims = decode_token(token, secret=settings.JWT_SECRET, algorithm=settings.JWT_ALGORITHM)
    except NotAuthenticated as exc:
        s.auth_failures += 1
        metrics.ERRORS.labels("auth", settings.SERVICE_NAME).inc()
        log.info("[WS] auth failed from %s: %s", conn.remote, exc.message)
        s.reply("auth_failed", frame, {"code": 401, "message": exc.message})
        if s.auth_failures >= settings.WS_MAX_AUTH_FAILURES:
            await conn.close(CLOSE_POLICY, "too many failed auth attempts", flush=True)
        return
    if conn.state is ConnState.AUTHENTICATED:
        if claims.user_id != conn.user_id:
            raise BadRequest("this connection is authenticated as another user")
        conn.set_expiry(claims.expires_at)
        s.reply(
            "auth_success",
            frame,
            {
                "user_id": conn.user_id,
                "groups": sorted(conn.groups),
                "expires_at": claims.expires_at * 1000,
                "refreshed": True,
            },
        )
        return

    hub = s.rt.hub
    with hub.membership_log(claims.user_id) as changes:
        seqs = await groups.group_seqs(s.rt.ctx, user_id=claims.user_id)
        if not conn.is_open:
            return
        conn.user_id, conn.name = claims.user_id, claims.name
        conn.state = ConnState.AUTHENTICATED
        conn.set_expiry(claims.expires_at)
        hub.attach_user(conn)
        replays = _subscribe_all(hub, conn, seqs, resume)
        for change in changes:  # membership changed while the groups were read
            if not change["added"]:
                replays.pop(change["group_id"], None)
            hub.apply_membership(conn, change)
    # Load every replay first, so auth_success can say where each one ends (has_more: the
    # client pages on with `sync`); the frames follow it, joined to the live stream.
    loaded: dict[str, list[dict[str, Any]]] = {}
    summary: dict[str, dict[str, Any]] = {}
    try:
        for group_id, after in replays.items():
            rows, has_more = await hub.load_replay(
                group_id, after_seq=after, limit=settings.WS_RESUME_LIMIT
            )
            loaded[group_id] = rows
            last = int(rows[-1]["seq"]) if rows else after
            summary[group_id] = {"last_seq": last, "has_more": has_more}
        await s.rt.presence.connect(claims.user_id, conn.id, tuple(conn.groups))
        s.last_heartbeat = clock()
        s.reply(
            "auth_success",
            frame,
            {
                "user_id": claims.user_id,
                "groups": sorted(conn.groups),
                "expires_at": claims.expires_at * 1000,
                "resume": summary,
            },
        )
        log.info("[WS] User %s connected from %s", claims.user_id, conn.remote)
    finally:
        for group_id, after in replays.items():
            hub.emit_replay(conn, group_id, after_seq=after, rows=loaded.get(group_id, []))


def _subscribe_all(
    hub: Hub, conn: Connection, seqs: dict[str, int], resume: dict[str, int]
) -> dict[str, int]:
    """Subscribe to every group; returns {group_id: after_seq} of the replays a resume needs."""
    replays: dict[str, int] = {}
    for group_id, last_seq in seqs.items():
        resumed = resume.get(group_id)
        if resumed is None:
            hub.join(conn, group_id, last_seq=last_seq)
            continue
        hub.subscribe(conn, group_id, last_seq=last_seq, floor=last_seq)
        # Seqs the channel delivered live while the membership query ran are past `last_seq`
        # but no longer live for this connection: the replay must cover them too.
        upto = max(last_seq, hub.delivered_upto(group_id))
        after = min(resumed, upto)
        conn.floors[group_id] = after
        if after < upto:
            # Hold live frames from this instant, so the replay joins the live stream seamlessly.
            hub.hold(conn, group_id)
            replays[group_id] = after
    return replays


async def on_send_message(s: Session, frame: ClientFrame) -> None:
    conn, rt = s.conn, s.rt
    assert conn.user_id is not None
    if not rt.send_buckets.allow(conn.user_id):
        raise RateLimited(
            f"at most {rt.settings.RATE_LIMIT_MESSAGES_PER_SECOND:g} messages per second"
        )
    data = frame.data
    result = await chat.send_message(
        rt.ctx,
        sender=Sender(conn.user_id, conn.name),
        group_id=data.get("group_id"),
        msg_type=data.get("msg_type", 1),
        content=data.get("content", ""),
        image_url=data.get("image_url", ""),
        client_msg_id=frame.message_id,
    )
    s.reply("ack", frame, result.ack)


async def on_join_group(s: Session, frame: ClientFrame) -> None:
    conn = s.conn
    assert conn.user_id is not None
    group_id = field_str(frame.data, "group_id")
    last_seq = await groups.is_member(s.rt.ctx, user_id=conn.user_id, group_id=group_id)
    if last_seq is None:
        raise NotMember()
    if conn.is_open:
        s.rt.hub.join(conn, group_id, last_seq=last_seq)
    s.reply("ack", frame, {"group_id": group_id, "success": True, "last_seq": last_seq})
    log.info("[WS] User %s joined group %s", conn.user_id, group_id)


async def on_leave_group(s: Session, frame: ClientFrame) -> None:
    group_id = field_str(frame.data, "group_id")
    s.rt.hub.unsubscribe(s.conn, group_id)
    s.reply("ack", frame, {"group_id": group_id, "success": True})
    log.info("[WS] User %s left group %s on %s", s.conn.user_id, group_id, s.conn.id)


async def on_mark_read(s: Session, frame: ClientFrame) -> None:
    conn = s.conn
    assert conn.user_id is not None
    data = frame.data
    group_id = field_str(data, "group_id")
    if "seq" in data:
        seq = field_int(data, "seq")
    elif "message_id" in data:
        message_group, seq = await chat.message_by_id(
            s.rt.ctx, user_id=conn.user_id, message_id=field_str(data, "message_id")
        )
        if message_group != group_id:
            raise BadRequest("message_id does not belong to group_id")
    else:
        raise BadRequest("mark_read needs seq or message_id")
    mark = await chat.mark_read(
        s.rt.ctx, user_id=conn.user_id, group_id=group_id, seq=seq, origin=conn.id
    )
    s.reply("ack", frame, {"group_id": group_id, "last_read_seq": mark})


async def on_sync(s: Session, frame: ClientFrame) -> None:
    conn, settings = s.conn, s.rt.settings
    assert conn.user_id is not None
    data = frame.data
    group_id = field_str(data, "group_id")
    after = field_int(data, "after_seq", default=0)
    limit = field_int(
        data, "limit", default=settings.WS_RESUME_LIMIT, lo=1, hi=settings.WS_RESUME_LIMIT
    )
    if await groups.is_member(s.rt.ctx, user_id=conn.user_id, group_id=group_id) is None:
        raise NotMember()
    last, has_more = await s.rt.hub.replay(conn, group_id, after_seq=after, limit=limit)
    s.reply("ack", frame, {"group_id": group_id, "last_seq": last, "has_more": has_more})


HANDLERS: dict[str, Handler] = {
    "ping": on_ping,
    "auth": on_auth,
    "send_message": on_send_message,
    "join_group": on_join_group,
    "leave_group": on_leave_group,
    "mark_read": on_mark_read,
    "sync": on_sync,
}
