"""A WebSocket that closes leaves nothing for the cycle collector (app/api/upgrade.py).

The service runs in this process under uvicorn, with the server settings of
`python -m app serve` on uvloop as in production (asyncio's own socket transport is in a
cycle with its read callback; uvloop's is not), so the objects a connection leaves behind
can be counted.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
import uvloop
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.__main__ import server_config
from app.api import upgrade
from app.config import Settings
from app.main import create_app
from tests.support.tokens import SECRET, token
from tests.support.wsclient import WsClient

CLIENTS = 5


@pytest.fixture
def collector_paused() -> Iterator[None]:
    """Cycles pile up until the test collects them itself."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


def cyclic_garbage() -> collections.Counter[str]:
    """The types of the objects only the cycle collector would free, by name."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        found = collections.Counter(type(o).__name__ for o in gc.garbage)
        found["HttpToolsProtocol"] = sum(isinstance(o, HttpToolsProtocol) for o in gc.garbage)
        return found
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


async def connect_and_leave(settings: Settings, http: Any) -> collections.Counter[str]:
    config = server_config(
        create_app(settings), settings, host="127.0.0.1", port=None, access_log=False
    )
    if http is not None:
        config.http = http
    assert isinstance(config.http, type) and issubclass(config.http, HttpToolsProtocol)
    server = uvicorn.Server(config)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)  # clients queue here until the server accepts
    url = f"ws://127.0.0.1:{listener.getsockname()[1]}/ws"
    serving = asyncio.create_task(server.serve(sockets=[listener]))
    try:

        async def connect_and_leave_once(user: str) -> None:
            client = await WsClient.open(url)
            assert (await client.auth(token(user)))["type"] == "auth_success"
            await client.close()
            # The server's side ends after the client's close frame.
            async with asyncio.timeout(10):
                while server.server_state.connections or server.server_state.tasks:
                    await asyncio.sleep(0.01)

        await connect_and_leave_once("warm-up")  # startup's own leftovers, collected now
        gc.collect()
        for i in range(CLIENTS):
            await connect_and_leave_once(f"cycle-{i}")
        return cyclic_garbage()
    finally:
        server.should_exit = True
        await serving
        listener.close()


def on_uvloop(settings: Settings, http: Any) -> collections.Counter[str]:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(connect_and_leave(settings, http))


def test_a_closed_websocket_leaves_no_reference_cycle(
    tmp_path: Path, collector_paused: None
) -> None:
    settings = Settings(SQLITE_PATH=str(tmp_path / "t.db"), JWT_SECRET=SECRET, _env_file=None)  # type: ignore[call-arg]
    garbage = on_uvloop(settings, None)  # the server settings as they are
    assert garbage["HttpToolsProtocol"] == 0
    assert garbage["HttpRequestParser"] == 0
    assert sum(garbage.values()) == 0, garbage


def test_uvicorns_own_protocol_leaves_a_cycle_per_websocket(
    tmp_path: Path, collector_paused: None
) -> None:
    """Why the subclass exists: with uvicorn's protocol as it is, each WebSocket leaves its
    HTTP protocol and parser (and with them the socket's transport) in a cycle. If this
    fails, uvicorn frees them itself and app/api/upgrade.py can go."""
    settings = Settings(SQLITE_PATH=str(tmp_path / "t.db"), JWT_SECRET=SECRET, _env_file=None)  # type: ignore[call-arg]
    garbage = on_uvloop(settings, HttpToolsProtocol)
    assert garbage["HttpToolsProtocol"] == CLIENTS
    assert garbage["HttpRequestParser"] == CLIENTS


def test_the_subclass_only_on_the_uvicorn_it_was_read_against(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(uvicorn, "__version__", "0.99.0")
    assert upgrade.http_protocol() == "auto"
    monkeypatch.setattr(uvicorn, "__version__", "0.54.0")
    assert issubclass(upgrade.http_protocol(), HttpToolsProtocol)  # type: ignore[arg-type]
