"""The AsyncAPI document cannot drift from the server: a real server is driven through every
client frame type, and every frame it sends is validated against the document's JSON Schema
for that type. Types sent but not documented, or documented but never seen, fail the test.

(tests/asyncapi/asyncapi.test.mjs checks the same document with the AsyncAPI parser.)
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from app.realtime.frames import CLIENT_TYPES
from tests.support.server import ServerProcess
from tests.support.tokens import bearer, token
from tests.support.wsclient import WsClient

try:
    import jsonschema  # type: ignore[import-untyped, unused-ignore]
    import referencing
except ImportError:  # pragma: no cover - a dev dependency
    if os.environ.get("CI") == "true":
        raise
    pytest.skip("the jsonschema package is not installed", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[2]
DOC_PATH = ROOT / "app" / "static" / "asyncapi.json"
DOC_URI = "urn:campushub:asyncapi"
CHANNEL_PREFIX = "#/channels/ws/messages/"
ACK_VARIANTS = ("SendAckData", "JoinAckData", "LeaveAckData", "MarkReadAckData", "SyncAckData")


@cache
def document() -> dict[str, Any]:
    return json.loads(DOC_PATH.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def _names(refs: list[dict[str, str]]) -> set[str]:
    names = set()
    for ref in refs:
        assert ref["$ref"].startswith(CHANNEL_PREFIX), ref
        names.add(ref["$ref"].removeprefix(CHANNEL_PREFIX))
    return names


def directions(doc: dict[str, Any]) -> tuple[set[str], set[str]]:
    """(client frame types, server frame types), read from the document's operations: the
    server receives client frames and sends replies and pushes."""
    client: set[str] = set()
    server: set[str] = set()
    for operation in doc["operations"].values():
        names = _names(operation["messages"])
        if operation["action"] == "receive":
            client |= names
            server |= _names(operation.get("reply", {}).get("messages", []))
        else:
            assert operation["action"] == "send"
            server |= names
    return client, server


def validator(schema: dict[str, Any]) -> Any:
    """A draft-07 validator (AsyncAPI's default schema format) that resolves the document's
    `#/components/...` references."""
    from referencing.jsonschema import DRAFT7

    resource = DRAFT7.create_resource(document())
    registry = referencing.Registry().with_resource(DOC_URI, resource)
    return jsonschema.Draft7Validator(schema, registry=registry)


def payload_validator(kind: str) -> Any:
    return validator({"$ref": f"{DOC_URI}#/components/messages/{kind}/payload"})


def schema_validator(name: str) -> Any:
    return validator({"$ref": f"{DOC_URI}#/components/schemas/{name}"})


def errors_of(kind: str, frame: dict[str, Any]) -> list[str]:
    return [
        f"{kind} at /{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in payload_validator(kind).iter_errors(frame)
    ]


class Recording:
    """Wraps a websockets connection: every text frame sent or received is kept, in order."""

    def __init__(self, inner: Any, log: list[tuple[str, dict[str, Any]]]) -> None:
        self.inner = inner
        self.log = log

    async def recv(self) -> str | bytes:
        raw = await self.inner.recv()
        self.log.append(("in", orjson.loads(raw)))
        return raw  # type: ignore[no-any-return]

    async def send(self, text: str) -> None:
        self.log.append(("out", orjson.loads(text)))
        await self.inner.send(text)

    async def raw_send(self, text: str) -> None:
        """Sent, but not recorded: a deliberately invalid frame."""
        await self.inner.send(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


# ---------------------------------------------------------------- the document alone


def test_served_document_is_the_file(client: Any) -> None:
    response = client.get("/asyncapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == document()


def test_every_client_frame_type_of_the_server_is_documented() -> None:
    client, server = directions(document())
    assert client == set(CLIENT_TYPES)
    assert client.isdisjoint(server)
    assert set(document()["channels"]["ws"]["messages"]) == client | server


def test_schemas_are_valid_and_examples_match_them() -> None:
    doc = document()
    for schema in doc["components"]["schemas"].values():
        jsonschema.Draft7Validator.check_schema(schema)
    for kind, message in doc["components"]["messages"].items():
        jsonschema.Draft7Validator.check_schema(message["payload"])
        assert message["payload"]["properties"]["type"] == {"const": kind}
        assert message["examples"], kind
        for example in message["examples"]:
            assert errors_of(kind, example["payload"]) == []


def test_schemas_reject_what_the_server_rejects() -> None:
    no_url = {"type": "send_message", "data": {"group_id": "g", "msg_type": 2, "content": "x"}}
    assert errors_of("send_message", no_url)
    blank = {"type": "send_message", "data": {"group_id": "g", "msg_type": 1, "content": " "}}
    assert errors_of("send_message", blank)
    long_id = {"type": "ping", "message_id": "x" * 65}
    assert errors_of("ping", long_id)
    mark = {"type": "mark_read", "data": {"group_id": "g"}}
    assert errors_of("mark_read", mark)
    assert errors_of("new_message", {"type": "new_message", "timestamp": 1, "data": {}})


# ---------------------------------------------------------------- against a real server


async def test_every_frame_the_server_sends_matches_the_document(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory()
    log: list[tuple[str, dict[str, Any]]] = []
    http = httpx.AsyncClient(base_url=server.base_url, timeout=10)

    async def connect() -> WsClient:
        ws = await WsClient.open(server.ws_url)
        ws.ws = Recording(ws.ws, log)  # type: ignore[assignment]
        return ws

    try:
        served = (await http.get("/asyncapi.json")).json()
        assert served == document()
        created = await http.post(
            "/api/v1/groups", json={"name": "Docs", "member_ids": ["bob"]}, headers=bearer("alice")
        )
        assert created.status_code == 201, created.text
        group = created.json()["group_id"]

        alice = await connect()
        # Before auth: ping works, anything else is 401; a bad token fails auth.
        pong = await alice.request("ping", None)
        assert pong["type"] == "pong"
        assert (await alice.request("join_group", {"group_id": group}))["data"]["code"] == 401
        failed = await alice.auth("not-a-jwt")
        assert failed["type"] == "auth_failed"
        ok = await alice.auth(token("alice"), resume={group: 0})
        assert ok["type"] == "auth_success" and ok["data"]["groups"] == [group]
        refreshed = await alice.auth(token("alice", ttl=7200))
        assert refreshed["type"] == "auth_success"
        assert (await alice.request("ping", {}))["type"] == "pong"

        phone = await connect()  # alice's second device
        assert (await phone.auth(token("alice")))["type"] == "auth_success"
        bob = await connect()
        assert (await bob.auth(token("bob")))["type"] == "auth_success"

        text = await alice.request(
            "send_message", {"group_id": group, "msg_type": 1, "content": "Hello"}
        )
        assert text["type"] == "ack"
        image = await alice.request(
            "send_message",
            {"group_id": group, "msg_type": 2, "image_url": "https://img.example/a.png"},
        )
        assert image["type"] == "ack" and image["data"]["seq"] == 2
        for ws in (alice, phone, bob):
            assert [m["seq"] for m in await ws.messages(2)] == [1, 2]

        read = await alice.request("mark_read", {"group_id": group, "seq": 1})
        assert read["data"]["last_read_seq"] == 1
        update = await phone.expect(lambda f: f["type"] == "read_update")
        assert update["data"] == {"group_id": group, "last_read_seq": 1}
        by_id = await alice.request(
            "mark_read", {"group_id": group, "message_id": image["data"]["message_id"]}
        )
        assert by_id["data"]["last_read_seq"] == 2
        await phone.expect(lambda f: f["type"] == "read_update")

        assert (await bob.request("leave_group", {"group_id": group}))["type"] == "ack"
        assert (await bob.request("join_group", {"group_id": group}))["type"] == "ack"
        denied = await bob.request("join_group", {"group_id": "no-such-group"})
        assert denied["data"]["code"] == 403
        sync_id = await bob.send("sync", {"group_id": group, "after_seq": 0, "limit": 1})
        replayed = await bob.expect(lambda f: f["type"] == "new_message")
        assert replayed["data"]["seq"] == 1
        synced = await bob.reply(sync_id)
        assert synced["type"] == "ack" and synced["data"]["has_more"] is True

        # Deliberately invalid frames (not recorded as sent): the server's answers still are.
        recording: Recording = bob.ws  # type: ignore[assignment]
        bad_id = f"bad-{time.time_ns()}"
        await recording.raw_send(
            orjson.dumps(
                {
                    "type": "send_message",
                    "message_id": bad_id,
                    "data": {"group_id": group, "msg_type": 2, "content": "no url"},
                }
            ).decode()
        )
        assert (await bob.reply(bad_id))["data"]["code"] == 400
        await recording.raw_send("{not json")
        unreadable = await bob.expect(lambda f: f["type"] == "error")
        assert unreadable["data"]["code"] == 400 and "message_id" not in unreadable

        pushed = await http.post(
            "/api/v1/notifications",
            json={"user_ids": ["bob"], "type": "course", "title": "Room change", "content": "B12"},
            headers=bearer("timetable", role="service"),
        )
        assert pushed.status_code == 201, pushed.text
        notice = await bob.expect(lambda f: f["type"] == "notification")
        assert notice["data"]["title"] == "Room change"

        for ws in (alice, phone, bob):
            await ws.close()
    finally:
        await http.aclose()

    documented_client, documented_server = directions(document())
    sent = [frame for direction, frame in log if direction == "out"]
    received = [frame for direction, frame in log if direction == "in"]
    problems = [e for frame in sent for e in errors_of(frame["type"], frame)]
    undocumented = sorted({f["type"] for f in received} - documented_server)
    assert undocumented == [], f"the server sends undocumented frame types: {undocumented}"
    problems += [e for frame in received for e in errors_of(frame["type"], frame)]
    assert problems == [], "frames that do not match the AsyncAPI document:\n" + "\n".join(problems)
    # Coverage: every type of both directions, and every kind of ack, was exercised.
    assert {f["type"] for f in sent} == documented_client
    assert {f["type"] for f in received} == documented_server
    acks = [f["data"] for f in received if f["type"] == "ack"]
    for variant in ACK_VARIANTS:
        assert any(schema_validator(variant).is_valid(a) for a in acks), f"no {variant} seen"
