"""Command line: `python -m app serve | migrate | token USER | client`."""

from __future__ import annotations

import argparse
import math
import os
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import uvicorn

    from app.config import Settings


def _token(args: argparse.Namespace) -> int:
    # Reads only the environment: no app import, so minting works without a database.
    from app.config import DEFAULT_JWT_SECRET
    from app.security import encode_token

    secret = os.environ.get("JWT_SECRET") or _dotenv("JWT_SECRET") or DEFAULT_JWT_SECRET
    algorithm = os.environ.get("JWT_ALGORITHM") or _dotenv("JWT_ALGORITHM") or "HS256"
    print(
        encode_token(
            args.user,
            secret=secret,
            algorithm=algorithm,
            name=args.name,
            role=args.role,
            ttl=args.ttl,
        )
    )
    return 0


def _dotenv(key: str) -> str | None:
    try:
        from dotenv import dotenv_values
    except ImportError:  # pragma: no cover - python-dotenv ships with pydantic-settings
        return None
    value = dotenv_values(".env").get(key)
    return value or None


def server_config(
    app: Any, settings: Settings, *, host: str | None, port: int | None, access_log: bool
) -> uvicorn.Config:
    """uvicorn's settings for the service: WebSockets on the sans-I/O protocol, uvloop and
    httptools where installed, no log configuration of its own."""
    import uvicorn

    from app.api.upgrade import http_protocol

    return uvicorn.Config(
        app,
        host=host or settings.HOST,
        port=port or settings.PORT,
        ws="websockets-sansio",
        ws_max_size=max(settings.WS_MAX_MESSAGE_BYTES * 2, 1 << 20),
        ws_ping_interval=settings.WS_HEARTBEAT_INTERVAL,
        ws_ping_timeout=max(1.0, settings.WS_READ_TIMEOUT - settings.WS_HEARTBEAT_INTERVAL),
        ws_per_message_deflate=settings.WS_PER_MESSAGE_DEFLATE,
        proxy_headers=False,  # X-Forwarded-For is honoured by the app, from TRUSTED_PROXIES only
        timeout_graceful_shutdown=math.ceil(settings.WS_SHUTDOWN_TIMEOUT),
        log_config=None,
        access_log=access_log,
        loop="auto",
        http=http_protocol(),
    )


def _serve(args: argparse.Namespace) -> int:
    import asyncio
    import socket

    import uvicorn

    from app import gc_policy
    from app.config import get_settings
    from app.logging import configure_logging
    from app.main import Lifecycle, create_app

    settings = get_settings()
    configure_logging(json=settings.LOG_FORMAT == "json", level=settings.LOG_LEVEL)
    lifecycle = Lifecycle()
    app = create_app(settings, lifecycle)
    config = server_config(
        app, settings, host=args.host, port=args.port, access_log=args.access_log
    )

    # Everything imported and built so far lives as long as the process, and so do most
    # survivors of a full collection: keep them out of the cycle collector's passes, which
    # otherwise stall the event loop for as long as the heap is large (app/gc_policy.py).
    policy = gc_policy.install(settings.GC_FULL_INTERVAL)

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: object) -> None:
            lifecycle.shutting_down = True  # /ready answers 503 from the first signal
            super().handle_exit(sig, frame)  # type: ignore[arg-type]

        async def serve(self, sockets: list[socket.socket] | None = None) -> None:
            if policy is None:
                await super().serve(sockets)
                return
            passes = asyncio.create_task(policy.run(), name="gc-small-passes")
            try:
                await super().serve(sockets)
            finally:
                passes.cancel()

    Server(config).run()
    return 0


def _migrate(args: argparse.Namespace) -> int:
    from app.config import get_settings
    from app.db.migrate import downgrade, upgrade

    url = get_settings().database_url
    if args.down:
        downgrade(url, args.revision or "base")
    else:
        upgrade(url, args.revision or "head")
    return 0


def _client(args: argparse.Namespace) -> int:
    from app.cli_client import run_client

    return run_client(args.url, args.token, args.group)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the service (uvicorn, uvloop + httptools)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--access-log", action="store_true")
    serve.set_defaults(func=_serve)

    token = sub.add_parser("token", help="mint a development JWT with JWT_SECRET")
    token.add_argument("user")
    token.add_argument("--name")
    token.add_argument("--role", choices=["service"])
    token.add_argument("--ttl", type=int, default=86400, help="seconds (default 1 day)")
    token.set_defaults(func=_token)

    migrate = sub.add_parser("migrate", help="alembic upgrade head (or --down)")
    migrate.add_argument("--down", action="store_true")
    migrate.add_argument("--revision")
    migrate.set_defaults(func=_migrate)

    client = sub.add_parser("client", help="interactive command-line client for /ws")
    client.add_argument("--url", default="ws://127.0.0.1:8889/ws")
    client.add_argument("--token", required=True)
    client.add_argument("--group", help="group to send typed lines to")
    client.set_defaults(func=_client)

    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
