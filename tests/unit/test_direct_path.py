"""The direct path: pre-built frames written straight into the socket's buffer."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from app.api.wire import LeanQueue, direct_wire
from app.realtime import frames
from app.realtime.connection import Connection
from tests.fakes import DirectFake, FakeSocket, parse_frames


def connection(transport: DirectFake, *, limit: int = 4, write_timeout: float = 5.0) -> Connection:
    conn = Connection(transport, queue_limit=limit, write_timeout=write_timeout)
    conn.start_writer()
    return conn


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536, 200_000])
def test_text_frame_lengths(size: int) -> None:
    payload = orjson.dumps({"content": "x" * size})
    assert parse_frames(frames.text_frame(payload)) == [{"content": "x" * size}]


def test_a_shared_frame_is_built_once() -> None:
    frame = frames.new_message(
        {"message_id": "m", "group_id": "g", "seq": 1, "created_at": 5, "content": "é"}
    )
    assert frame.wire is frame.wire and frames.wire_of(frame) is frame.wire
    assert parse_frames(frame.wire) == [orjson.loads(frame.text)]


async def test_frames_go_straight_to_the_socket_in_order() -> None:
    transport = DirectFake()
    conn = connection(transport)
    shared = frames.shared("notification", {"n": 1})
    assert conn.push(shared)
    conn.push_replay(frames.encode("pong", {}))
    assert conn.push('{"type":"x","data":{}}')
    # no task ran in between: every frame is already in the socket's buffer
    assert [f["type"] for f in parse_frames(b"".join(transport.socket.chunks))] == [
        "notification",
        "pong",
        "x",
    ]
    assert transport.sent == []  # nothing took the ASGI path


async def test_a_backed_up_socket_queues_then_flushes_in_order_when_it_drains() -> None:
    transport = DirectFake()
    conn = connection(transport, limit=4)
    transport.writable.clear()
    for i in range(4):
        assert conn.push(frames.shared("m", {"i": i}))
    conn.push_replay(frames.encode("ack", {"i": 4}))  # a reply never trips the limit
    assert transport.socket.chunks == []
    transport.writable.set()
    await asyncio.wait_for(conn.flush(), 2)
    got = parse_frames(b"".join(transport.socket.chunks))
    assert [f["data"]["i"] for f in got] == [0, 1, 2, 3, 4]
    assert conn.push(frames.shared("m", {"i": 5}))  # and straight through again
    assert parse_frames(transport.socket.chunks[-1])[0]["data"]["i"] == 5


async def test_a_socket_that_stays_backed_up_overflows_with_1013() -> None:
    transport = DirectFake()
    conn = connection(transport, limit=2)
    transport.writable.clear()
    assert conn.push("a") and conn.push("b")
    assert conn.push("c") is False
    assert await transport.wait_closed() == 1013


async def test_a_socket_that_never_drains_hits_the_write_timeout() -> None:
    transport = DirectFake()
    conn = connection(transport, limit=100, write_timeout=0.05)
    transport.writable.clear()
    assert conn.push("a")
    assert await transport.wait_closed() == 1013


async def test_nothing_is_written_to_a_closing_socket() -> None:
    transport = DirectFake()
    conn = connection(transport)
    transport.socket.closing = True
    assert conn.push("a") is False
    assert transport.socket.chunks == []


def test_direct_wire_only_for_uvicorns_sansio_protocol() -> None:
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

    proto = object.__new__(WebSocketsSansIOProtocol)
    proto.transport = FakeSocket()  # type: ignore[assignment]
    proto.writable = asyncio.Event()
    assert direct_wire(proto.receive) is proto

    class Other:
        transport = FakeSocket()
        writable = asyncio.Event()

        async def receive(self) -> None: ...

    assert direct_wire(Other().receive) is None
    assert direct_wire(lambda: None) is None


async def test_a_connection_that_keeps_up_allocates_no_queue_events_or_task() -> None:
    """Idle connections are the many: on the direct path nothing waits, so nothing is made."""
    transport = DirectFake()
    conn = connection(transport)
    for i in range(3):
        assert conn.push(frames.shared("m", {"i": i}))
    conn.push_replay(frames.encode("pong", {}))
    assert conn.queue == () and conn._exempt == ()
    assert conn._writer is None and conn._wakeup is None and conn._closed is None
    await conn.close(1000)
    await asyncio.wait_for(conn.wait_closed(), 1)  # closed before anyone waited: no hang
    assert await transport.wait_closed() == 1000


async def test_wait_closed_wakes_when_the_connection_closes_later() -> None:
    transport = DirectFake()
    conn = connection(transport)
    waiter = asyncio.create_task(conn.wait_closed())
    await asyncio.sleep(0)  # the waiter is parked on the event it made
    assert not waiter.done()
    conn.mark_closed(1001)
    await asyncio.wait_for(waiter, 1)


def _sansio_source() -> str:
    import inspect

    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

    return inspect.getsource(WebSocketsSansIOProtocol)


def test_uvicorn_reads_the_handshake_request_and_response_only_before_accept() -> None:
    """shed_handshake drops them after the accept; this pins the assumption to the code."""
    import ast

    tree = ast.parse(_sansio_source())
    readers: dict[str, set[str]] = {"request": set(), "response": set()}
    for func in ast.walk(tree):
        if isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
            for node in ast.walk(func):
                if (
                    isinstance(node, ast.Attribute)
                    and isinstance(node.value, ast.Name)
                    and node.value.id == "self"
                    and node.attr in readers
                ):
                    readers[node.attr].add(func.name)
    assert readers["request"] == {"handle_connect"}
    # `send` uses the response only for the accept or a refusal (before handshake_complete).
    assert readers["response"] == {"handle_connect", "send"}


def test_shed_handshake_releases_what_only_the_handshake_needed() -> None:
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

    from app.api.wire import shed_handshake

    proto = object.__new__(WebSocketsSansIOProtocol)
    proto.transport = FakeSocket()  # type: ignore[assignment]
    proto.writable = asyncio.Event()
    proto.request = object()  # type: ignore[assignment]
    proto.response = object()  # type: ignore[assignment]
    proto.queue = asyncio.Queue()
    proto.queue.put_nowait({"type": "websocket.receive", "text": "early"})
    scope: dict[str, Any] = {"headers": [(b"origin", b"x")], "path": "/ws", "state": {"a": 1}}
    shed_handshake(direct_wire(proto.receive), scope)
    assert proto.request is None and proto.response is None
    assert isinstance(proto.queue, LeanQueue)
    assert proto.queue.qsize() == 1  # what was queued before is kept
    assert scope == {"headers": [], "path": "/ws"}
    untouched: dict[str, Any] = {"headers": [(b"origin", b"x")]}
    shed_handshake(None, untouched)  # the plain ASGI path: nothing is known, nothing changes
    assert untouched == {"headers": [(b"origin", b"x")]}


def test_shed_handshake_empties_the_request_that_websockets_parser_keeps() -> None:
    """websockets' ServerProtocol.parse generator holds the handshake request for the whole
    connection; after the shed its headers are gone and frames still parse."""
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
    from websockets.http11 import Request
    from websockets.server import ServerProtocol

    from app.api.wire import shed_handshake

    server = ServerProtocol()
    server.receive_data(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        b"Origin: http://x\r\n\r\n"
    )
    [request] = server.events_received()
    assert isinstance(request, Request) and len(request.headers) == 6
    server.send_response(server.accept(request))
    proto = object.__new__(WebSocketsSansIOProtocol)
    proto.transport = FakeSocket()  # type: ignore[assignment]
    proto.writable = asyncio.Event()
    proto.request = request
    proto.response = None
    shed_handshake(direct_wire(proto.receive), {"headers": []})
    assert len(request.headers) == 0
    mask = b"\x01\x02\x03\x04"
    payload = bytes(b ^ mask[i % 4] for i, b in enumerate(b"hi"))
    server.receive_data(b"\x81\x82" + mask + payload)
    [frame] = server.events_received()
    assert frame.data == b"hi"


async def test_lean_queue_is_first_in_first_out_and_wakes_its_reader() -> None:
    old: asyncio.Queue[int] = asyncio.Queue()
    old.put_nowait(1)
    queue = LeanQueue.taking_over(old)
    assert old.empty() and not queue.empty()
    queue.put_nowait(2)
    assert [await queue.get(), await queue.get()] == [1, 2]
    assert queue.empty()
    reader = asyncio.create_task(queue.get())
    await asyncio.sleep(0)  # the reader is parked
    assert not reader.done()
    queue.put_nowait(3)
    queue.put_nowait(4)
    assert await asyncio.wait_for(reader, 1) == 3
    assert await queue.get() == 4


async def test_lean_queue_reader_cancelled_while_waiting_leaves_it_usable() -> None:
    queue = LeanQueue()
    reader = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="one reader"):
        await queue.get()
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    queue.put_nowait("after")
    assert await asyncio.wait_for(queue.get(), 1) == "after"


def test_lean_queue_serves_what_uvicorns_protocol_calls_on_its_queue() -> None:
    """The protocol (as read for the pinned uvicorn) calls only these on `self.queue`."""
    import ast
    import inspect

    from uvicorn.protocols.websockets import websockets_sansio_impl

    tree = ast.parse(inspect.getsource(websockets_sansio_impl))
    called = {
        node.func.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Attribute)
        and node.func.value.attr == "queue"
    }
    assert called == {"put_nowait", "get", "empty"}
    assert all(hasattr(LeanQueue, name) for name in called)
