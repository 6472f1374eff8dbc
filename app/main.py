"""Application factory: the lifespan wires engine, bus, presence and hub, in that order."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from prometheus_fastapi_instrumentator import Instrumentator
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from starlette.routing import WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from app import __version__
from app.api.errors import error_responses, install_error_handlers
from app.api.routes import groups, health, messages, notifications, web, ws
from app.api.routes.docs import install_docs
from app.bus import Bus, BusEvent, create_bus
from app.config import Settings, get_settings
from app.db.hotpath import HotPath
from app.db.migrate import SchemaCheck, database_revision, upgrade_async
from app.db.repositories.messages import MessageRepository
from app.db.session import make_engine, make_sessionmaker
from app.db.sqlite_hotpath import SqliteHotPath, sqlite_file
from app.errors import Unavailable
from app.realtime.handlers import Runtime
from app.realtime.hub import Hub
from app.realtime.presence import MemoryPresence, Presence, PresenceWrites
from app.realtime.ratelimit import TokenBuckets, WindowCounter
from app.schemas.events import message_data
from app.services.context import ServiceContext
from app.services.outbox import OutboxRelay

log = logging.getLogger("app")


@dataclass(slots=True)
class Lifecycle:
    shutting_down: bool = False


def make_presence(settings: Settings) -> Presence:
    if settings.REDIS_URL is None:
        return MemoryPresence()
    from app.realtime.redis_presence import RedisPresence

    return RedisPresence(settings.REDIS_URL, ttl=settings.PRESENCE_TTL)


async def canaries(bus: Bus, streams: tuple[str, ...], settings: Settings) -> None:
    """Publish a canary on every stream a few times per stall timeout, so each reader keeps
    advancing while it lives; `/ready` turns 503 when one stops (SPEC §8)."""
    interval = max(0.05, settings.FANOUT_STALL_TIMEOUT / 3)
    while True:
        for stream in streams:
            try:
                await bus.publish(stream, BusEvent("canary", {"service": settings.SERVICE_NAME}))
            except Unavailable:
                pass
        await asyncio.sleep(interval)


async def heartbeats(hub: Hub, writes: PresenceWrites, settings: Settings) -> None:
    """Refresh the presence of every local connection well within PRESENCE_TTL."""
    interval = max(1.0, settings.PRESENCE_TTL / 3)
    while True:
        await asyncio.sleep(interval)
        entries = [(c.user_id, c.id) for c in tuple(hub.connections) if c.user_id is not None]
        try:
            await writes.heartbeat(entries)
        except Exception:
            log.warning("[WS] presence heartbeat failed")


class Service(FastAPI):
    """The ASGI app: `/ws` goes straight to its endpoint, everything else through FastAPI.

    The WebSocket endpoint is raw ASGI and uses none of the HTTP middlewares (errors,
    exception handlers, metrics, routing); passing it through them cost CPU on every handshake
    and a coroutine frame per layer held for each connection's lifetime.
    """

    ws_path = "/ws"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ws_endpoint = ws.WebSocketEndpoint()
        self.router.routes.append(WebSocketRoute(self.ws_path, self.ws_endpoint))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and scope["path"] == self.ws_path:
            scope["app"] = self
            await self.ws_endpoint(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


async def check_schema(engine: AsyncEngine, schema: SchemaCheck) -> None:
    """Say at start when the database is not migrated for this version (`/ready` answers 503
    until it is), or is at a newer version's revision; the service starts either way."""
    try:
        async with AsyncSession(engine) as session:
            await session.execute(text("SELECT 1"))
            revision = await database_revision(session)
    except Exception as exc:  # the database is down: /ready says so, and the service retries
        log.warning("database schema not checked at start: %s", type(exc).__name__)
        return
    if not schema.usable(revision):
        log.error(
            "database schema at revision %s, this version needs %s: run `python -m app migrate`"
            " (/ready answers 503 until then)",
            revision or "none (never migrated)",
            schema.head,
        )
    elif revision != schema.head:
        log.warning(
            "database schema at revision %s, newer than this version's %s (a rolling upgrade)",
            revision,
            schema.head,
        )


def create_app(settings: Settings | None = None, lifecycle: Lifecycle | None = None) -> FastAPI:
    settings = settings or get_settings()
    lifecycle = lifecycle or Lifecycle()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        if settings.is_dev and settings.JWT_SECRET == "change-me":
            log.warning("JWT_SECRET is the development default: embedded/dev mode only")
        engine = make_engine(settings.database_url, pool_size=settings.DB_POOL_SIZE)
        if settings.embedded:
            await upgrade_async(settings.database_url)
        schema = SchemaCheck.of_scripts()
        await check_schema(engine, schema)
        bus = create_bus(settings.REDIS_URL, maxlen=settings.STREAM_MAXLEN)
        await bus.connect()
        sessions = make_sessionmaker(engine)
        # The outbox guards against a bus outage; the in-process bus cannot have one.
        relay = OutboxRelay(sessions, bus) if settings.REDIS_URL is not None else None
        hot: HotPath | SqliteHotPath | None = None
        if engine.dialect.name == "postgresql":
            hot = HotPath(settings.database_url, size=settings.DB_POOL_SIZE)
        elif engine.dialect.name == "sqlite" and sqlite_file(engine.url.database):
            hot = SqliteHotPath(str(engine.url.database), engine.dialect)
        if hot is not None:
            await hot.start()
        ctx = ServiceContext(settings=settings, sessions=sessions, bus=bus, outbox=relay, hot=hot)
        presence = make_presence(settings)

        async def fetch_after(group_id: str, after_seq: int, limit: int) -> list[dict[str, Any]]:
            if hot is not None:
                return await hot.messages_after(group_id, after_seq, limit)
            async with ctx.session() as session:
                rows = await MessageRepository(session).after_seq(
                    group_id=group_id, after_seq=after_seq, limit=limit
                )
                return [message_data(m) for m in rows]

        hub = Hub(
            fetch_after=fetch_after,
            service=settings.SERVICE_NAME,
            gap_delay=settings.GAP_FILL_DELAY,
        )
        hub.stall_timeout = settings.FANOUT_STALL_TIMEOUT
        if settings.REDIS_URL is not None:
            ctx.deliver_local = hub.deliver
        runtime = Runtime(
            ctx=ctx,
            hub=hub,
            presence=presence,
            send_buckets=TokenBuckets(
                settings.RATE_LIMIT_MESSAGES_PER_SECOND, settings.RATE_LIMIT_BURST
            ),
        )
        streams = (settings.STREAM_MESSAGES, settings.STREAM_NOTIFICATIONS, settings.STREAM_EVENTS)
        tasks = [
            asyncio.create_task(hub.run(bus, streams), name="hub"),
            asyncio.create_task(canaries(bus, streams, settings), name="canary"),
            asyncio.create_task(
                heartbeats(hub, runtime.presence_writes, settings), name="presence"
            ),
        ]
        if relay is not None:
            tasks.append(asyncio.create_task(relay.run(), name="outbox-relay"))
        log.info(
            "CampusHub Realtime %s up: %s storage, %s bus",
            __version__,
            "SQLite (embedded)" if settings.embedded else "Postgres",
            "in-process" if settings.REDIS_URL is None else "Redis Streams",
        )
        try:
            yield {
                "ctx": ctx,
                "hub": hub,
                "runtime": runtime,
                "presence": presence,
                "lifecycle": lifecycle,
                "schema": schema,
                "ip_limiter": WindowCounter(settings.WS_CONNECT_RATE_PER_IP),
                "trusted_proxies": ws.trusted_networks(settings),
            }
        finally:
            lifecycle.shutting_down = True
            await hub.close_all(1012, "server restart", timeout=settings.WS_SHUTDOWN_TIMEOUT)
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            # The presence writes of the connections just closed, before the client goes.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(settings.WS_SHUTDOWN_TIMEOUT):
                    await runtime.presence_writes.flush()
            await presence.close()
            await bus.disconnect()
            if hot is not None:
                await hot.close()
            await engine.dispose()

    app = Service(
        title="CampusHub Realtime",
        version=__version__,
        summary="Group chat, notifications and presence pushed over WebSocket, with REST.",
        description=(
            "REST companion of the `/ws` WebSocket protocol. Every `/api/v1` route takes "
            '`Authorization: Bearer <JWT>`; errors are `{"detail": ...}`.'
        ),
        lifespan=lifespan,
        docs_url=None,  # /docs and /redoc below, from files the app serves (no CDN)
        redoc_url=None,
    )
    install_error_handlers(app)
    install_docs(app)
    api = "/api/v1"
    every = error_responses(401, 503)  # every /api/v1 route authenticates and stores
    app.include_router(groups.router, prefix=api, responses=every)
    app.include_router(messages.router, prefix=api, responses=every)
    app.include_router(notifications.router, prefix=api, responses=every)
    app.include_router(health.router)
    app.include_router(web.router)
    app.mount("/static", StaticFiles(directory=web.STATIC_DIR), name="static")
    Instrumentator(excluded_handlers=["/metrics"]).instrument(app).expose(
        app, include_in_schema=False
    )
    return app
