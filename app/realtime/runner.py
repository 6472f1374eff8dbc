"""Drive one connection: auth deadline, read → parse → dispatch → reply; never raises out."""

from __future__ import annotations

import asyncio
import logging
import time

from app import metrics
from app.errors import AppError, NotAuthenticated
from app.realtime import frames
from app.realtime.connection import (
    CLOSE_POLICY,
    CLOSE_TOO_BIG,
    CLOSE_UNSUPPORTED,
    AuthDeadline,
    Connection,
    ConnState,
    auth_deadlines,
)
from app.realtime.frames import FrameError
from app.realtime.handlers import HANDLERS, Runtime, Session
from app.realtime.transport import Transport, TransportClosed

log = logging.getLogger("app.realtime")

PRE_AUTH_TYPES = frozenset({"ping", "auth"})


async def run_connection(transport: Transport, rt: Runtime, *, remote: str = "") -> None:
    """Serve one accepted WebSocket until it closes. Errors become error frames or a close."""
    settings = rt.settings
    service = settings.SERVICE_NAME
    conn = Connection(
        transport,
        queue_limit=settings.WS_SEND_QUEUE,
        write_timeout=settings.WS_WRITE_TIMEOUT,
        remote=remote,
    )
    session = Session(conn=conn, rt=rt)
    meters = rt.meters
    received, duration = meters.received, meters.duration
    receive_errors, send_errors = meters.receive_errors, meters.send_errors
    max_bytes = settings.WS_MAX_MESSAGE_BYTES
    loop = asyncio.get_running_loop()
    auth_deadline = loop.time() + settings.WS_AUTH_TIMEOUT

    async with rt.hub.register(conn):
        conn.reader = asyncio.current_task()
        conn.start_writer()
        # The deadline closes the connection while it waits for frames (one shared timer);
        # a frame still being handled at the deadline is finished, then checked here.
        deadline: AuthDeadline | None = auth_deadlines().add(conn, auth_deadline)
        try:
            while conn.is_open:
                if deadline is not None:
                    if conn.state is not ConnState.AWAITING_AUTH:
                        deadline.cancel()
                        deadline = None
                    elif loop.time() >= auth_deadline:
                        await conn.close(CLOSE_POLICY, "authentication timeout", flush=True)
                        break
                conn.receiving = True
                message = await transport.receive()
                conn.receiving = False
                if isinstance(message, bytes):
                    receive_errors.inc()
                    await conn.close(CLOSE_UNSUPPORTED, "binary frames are not accepted")
                    break
                if len(message) > max_bytes or (
                    len(message) * 4 > max_bytes and len(message.encode()) > max_bytes
                ):
                    receive_errors.inc()
                    await conn.close(CLOSE_TOO_BIG, f"frame over {max_bytes} bytes")
                    break
                received.inc()
                started = time.perf_counter()
                await _dispatch(session, message, receive_errors, send_errors)
                duration.observe(time.perf_counter() - started)
        except TransportClosed as closed:
            conn.mark_closed(closed.code)
            # When thousands leave in one turn, their clean-ups take turns (TurnPacer).
            await rt.closing.turn()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if not conn.abandoned or task is None or task.uncancel() > 0:
                conn.mark_closed(1012)
                raise
            # Our own cancel (Connection._abandon): the peer is gone for us; clean up below.
        except Exception:
            log.exception("[WS] connection %s failed", conn.id)
            await conn.close(1011, "internal error")
        finally:
            if deadline is not None:
                deadline.cancel()
            if conn.is_open:
                await conn.close(1000)
            metrics.DISCONNECTS.labels(str(conn.close_code or 1006), service).inc()
            if conn.user_id is not None:
                rt.presence_writes.disconnect(conn.user_id, conn.id, tuple(conn.groups))
                log.info("[WS] User %s disconnected (%s)", conn.user_id, conn.close_code or 1006)


async def _dispatch(
    session: Session, text: str, receive_errors: object, send_errors: object
) -> None:
    conn = session.conn
    message_id: str | None = None
    try:
        frame = frames.parse(text)
        message_id = frame.message_id
        if conn.state is not ConnState.AUTHENTICATED and frame.type not in PRE_AUTH_TYPES:
            raise NotAuthenticated("authenticate first: send an auth frame")
        await HANDLERS[frame.type](session, frame)
    except FrameError as exc:
        receive_errors.inc()  # type: ignore[attr-defined]
        conn.push_replay(frames.error(exc.code, exc.message, message_id=exc.message_id))
    except AppError as exc:
        (send_errors if exc.code >= 500 else receive_errors).inc()  # type: ignore[attr-defined]
        conn.push_replay(frames.error(exc.code, exc.message, message_id=message_id))
    except TransportClosed:
        raise
    except Exception:
        log.exception("[WS] handling a frame on %s failed", conn.id)
        send_errors.inc()  # type: ignore[attr-defined]
        conn.push_replay(frames.error(500, "internal error", message_id=message_id))
