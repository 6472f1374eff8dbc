"""/ws as a thin raw-ASGI adapter: handshake checks, accept, then hand over to the core."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from starlette.types import Message, Receive, Scope, Send

from app import metrics
from app.api.wire import direct_wire, shed_handshake
from app.config import Settings
from app.logging import HANDSHAKE_REFUSED
from app.realtime.handlers import Runtime
from app.realtime.runner import run_connection
from app.realtime.transport import DirectWire, TransportClosed

log = logging.getLogger("app.realtime")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class AsgiTransport:
    """The Transport protocol over raw ASGI receive/send (no per-frame Starlette overhead)."""

    __slots__ = ("_receive", "_send", "direct")

    def __init__(self, receive: Receive, send: Send, *, direct: bool = True) -> None:
        self._receive = receive
        self._send = send
        self.direct: DirectWire | None = direct_wire(receive) if direct else None

    async def receive(self) -> str | bytes:
        message = await self._receive()
        kind = message["type"]
        if kind == "websocket.receive":
            text = message.get("text")
            if text is not None:
                return str(text)
            return bytes(message.get("bytes") or b"")
        if kind == "websocket.disconnect":
            raise TransportClosed(int(message.get("code", 1005)))
        raise TransportClosed(1006)

    async def send_text(self, data: str) -> None:
        try:
            await self._send({"type": "websocket.send", "text": data})
        except (OSError, RuntimeError) as exc:
            raise TransportClosed(1006) from exc
        except Exception as exc:  # uvicorn's ClientDisconnected and peers
            raise TransportClosed(1006) from exc

    async def close(self, code: int = 1000, reason: str = "") -> None:
        try:
            await self._send({"type": "websocket.close", "code": code, "reason": reason[:120]})
        except Exception:
            pass


def trusted_networks(settings: Settings) -> list[Network]:
    return [ipaddress.ip_network(item, strict=False) for item in settings.TRUSTED_PROXIES]


def client_ip(scope: Scope, trusted: Sequence[Network]) -> str:
    """The peer address; behind trusted proxies, the nearest untrusted X-Forwarded-For hop."""
    peer = (scope.get("client") or ("unknown", 0))[0]
    if not trusted or not _is_trusted(peer, trusted):
        return str(peer)
    forwarded = ""
    for name, value in scope.get("headers", ()):
        if name == b"x-forwarded-for":
            forwarded = (forwarded + "," if forwarded else "") + value.decode("latin-1")
    hops = [hop.strip() for hop in forwarded.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not _is_trusted(hop, trusted):
            return hop
    return hops[0] if hops else str(peer)


def _is_trusted(address: str, trusted: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in trusted)


def origin_allowed(origin: str, allowed: Sequence[str], host: str | None) -> bool:
    """`*` allows any origin; otherwise the listed origins and the service's own origin."""
    if "*" in allowed:
        return True
    normalized = origin.rstrip("/").lower()
    if normalized in (a.rstrip("/").lower() for a in allowed):
        return True
    netloc = urlsplit(normalized).netloc
    return bool(host) and netloc == (host or "").lower()


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return None


class WebSocketEndpoint:
    """The ASGI app mounted at /ws."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state: dict[str, Any] = scope["state"]
        rt: Runtime = state["runtime"]
        settings = rt.settings
        message: Message = await receive()
        if message["type"] != "websocket.connect":
            return
        ip = client_ip(scope, state["trusted_proxies"])
        origin = _header(scope, b"origin")
        if origin is not None and not origin_allowed(
            origin, settings.WS_ALLOWED_ORIGINS, _header(scope, b"host")
        ):
            log.info("[WS] origin %s refused for %s", origin, ip)
            await _deny(scope, send, settings, "origin", 403, "origin not allowed")
            return
        limiter = state["ip_limiter"]
        if not limiter.allow(ip):
            detail = "too many connection attempts, retry later"
            await _deny(scope, send, settings, "rate", 429, detail, limiter.retry_after())
            return
        if state["lifecycle"].shutting_down:
            await _deny(scope, send, settings, "shutdown", 503, "shutting down")
            return
        if len(rt.hub.connections) >= settings.WS_MAX_CONNECTIONS:
            await _deny(scope, send, settings, "full", 503, "instance full")
            return
        await send({"type": "websocket.accept"})
        transport = AsgiTransport(receive, send, direct=settings.WS_DIRECT_WRITES)
        shed_handshake(transport.direct, scope)
        del state  # the scope's copy of the app state: not needed past the handshake
        await run_connection(transport, rt, remote=ip)


async def _deny(
    scope: Scope,
    send: Send,
    settings: Settings,
    reason: str,
    status: int,
    detail: str,
    retry_after: int = 1,
) -> None:
    """Refuse the handshake with an HTTP status where the server supports it (uvicorn does),
    counted by `reason` in websocket_handshakes_refused_total. A 429 or 503 says when to come
    back (`Retry-After`, seconds), as REST's do."""
    metrics.REFUSED.labels(reason, settings.SERVICE_NAME).inc()
    HANDSHAKE_REFUSED.set(True)  # see app.logging: uvicorn would log the refusal as an error
    if "websocket.http.response" in scope.get("extensions", {}):
        body = ('{"detail": "' + detail + '"}').encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        if status in (429, 503):
            headers.append((b"retry-after", str(retry_after).encode()))
        await send({"type": "websocket.http.response.start", "status": status, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": 1008})
