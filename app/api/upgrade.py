"""uvicorn's httptools HTTP protocol, letting go of its request parser once a WebSocket
upgrade has handed the socket on.

uvicorn's HTTP protocol object and its httptools parser refer to each other (the parser
calls the protocol's `on_*` methods). uvicorn breaks that cycle in `connection_lost`, which
an upgraded connection never calls on the HTTP protocol: by then the socket belongs to the
WebSocket protocol. So every WebSocket left the HTTP protocol, its parser, the request's
scope and the socket's transport (29 objects) to the cycle collector, and one whose
handshake was in flight when the collector froze its survivors (app/gc_policy.py) stayed
until the next thaw. Letting go of the parser right after the upgrade, as `connection_lost`
would, frees them by reference counting when the WebSocket closes.

This subclasses uvicorn's protocol, so it is pinned like the direct path (app/api/wire.py):
used only with the uvicorn versions there and when httptools is installed; otherwise the
server gets uvicorn's own choice ("auto").
"""

from __future__ import annotations

import asyncio

from app.api.wire import uvicorn_supported


def http_protocol() -> type[asyncio.Protocol] | str:
    """What `uvicorn.Config(http=...)` gets for the WebSocket server."""
    if not uvicorn_supported():
        return "auto"
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # no httptools: uvicorn's h11 protocol
        return "auto"
    if not hasattr(HttpToolsProtocol, "handle_websocket_upgrade"):
        return "auto"

    class HttpProtocol(HttpToolsProtocol):
        def handle_websocket_upgrade(self) -> None:
            super().handle_websocket_upgrade()
            # The WebSocket protocol owns the socket now; nothing reads this parser again.
            self.parser = None  # type: ignore[assignment]

    return HttpProtocol
