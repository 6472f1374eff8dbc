"""Frames: strict envelope parsing (SPEC §3.1, §11) and server frame encoding (§3.3)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from app.errors import BadRequest
from app.realtime import frames
from app.realtime.frames import FrameError, field_int, field_str, parse
from tests.fakes import message


def dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()


def test_parse_a_full_envelope() -> None:
    frame = parse(
        dumps({"type": "sync", "message_id": "c-1", "timestamp": 17, "data": {"group_id": "g"}})
    )
    assert (frame.type, frame.message_id, frame.timestamp, frame.data) == (
        "sync",
        "c-1",
        17,
        {"group_id": "g"},
    )


def test_message_id_timestamp_and_data_are_optional() -> None:
    frame = parse('{"type": "ping"}')
    assert (frame.message_id, frame.timestamp, frame.data) == (None, None, {})
    assert parse('{"type": "ping", "data": null}').data == {}


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not json",
        "{",
        '{"type": "ping"} {"type": "ping"}',
        '{"type": "ping"}\n{"type": "ping"}',
        "[]",
        '[{"type": "ping"}]',
        "42",
        '"ping"',
        "null",
        "true",
        '{"type": "ping", "timestamp": NaN}',
        '{"message_id": "x"}',
    ],
)
def test_malformed_frames_are_bad_requests(text: str) -> None:
    with pytest.raises(BadRequest) as caught:
        parse(text)
    assert caught.value.code == 400 and caught.value.message


@pytest.mark.parametrize(
    "frame",
    [
        {"type": "ping", "message_id": 5},
        {"type": "ping", "message_id": ""},
        {"type": "ping", "message_id": "x" * 65},
        {"type": "ping", "message_id": ["a"]},
        {"type": "ping", "message_id": True},
    ],
)
def test_bad_message_id_is_rejected(frame: dict[str, Any]) -> None:
    with pytest.raises(BadRequest):
        parse(dumps(frame))


def test_message_id_of_64_characters_is_accepted() -> None:
    assert parse(dumps({"type": "ping", "message_id": "é" * 64})).message_id == "é" * 64


@pytest.mark.parametrize(
    "extra",
    [
        {"type": 1},
        {"type": None},
        {"type": "PING"},
        {"type": "new_message"},
        {"type": "ping", "timestamp": True},
        {"type": "ping", "timestamp": False},
        {"type": "ping", "timestamp": 1.5},
        {"type": "ping", "timestamp": "1764200000123"},
        {"type": "ping", "data": "{}"},
        {"type": "ping", "data": []},
        {"type": "ping", "data": 0},
    ],
)
def test_envelope_errors_keep_the_message_id(extra: dict[str, Any]) -> None:
    with pytest.raises(FrameError) as caught:
        parse(dumps({"message_id": "c-9", **extra}))
    assert caught.value.code == 400
    assert caught.value.message_id == "c-9"


def test_unknown_type_in_the_message_is_truncated() -> None:
    with pytest.raises(FrameError) as caught:
        parse(dumps({"type": "x" * 5000}))
    assert len(caught.value.message) < 100


def test_encode_is_one_compact_object_with_the_envelope() -> None:
    text = frames.encode("ack", {"group_id": "g", "ok": "line\nbreak"}, message_id="c-1")
    assert "\n" not in text
    decoded = orjson.loads(text)
    assert decoded["type"] == "ack" and decoded["message_id"] == "c-1"
    assert isinstance(decoded["timestamp"], int) and decoded["timestamp"] > 1_700_000_000_000
    assert decoded["data"] == {"group_id": "g", "ok": "line\nbreak"}


def test_encode_without_message_id_omits_it() -> None:
    assert "message_id" not in orjson.loads(frames.encode("read_update", {}))


def test_new_message_envelope_carries_server_id_and_created_at() -> None:
    data = message("g", 3, content="héllo ✓")
    decoded = orjson.loads(frames.new_message(data).text)
    assert decoded == {
        "type": "new_message",
        "message_id": data["message_id"],
        "timestamp": data["created_at"],
        "data": data,
    }


def test_error_frame_shape() -> None:
    decoded = orjson.loads(frames.error(429, "slow down", message_id="c-2"))
    assert decoded["type"] == "error" and decoded["message_id"] == "c-2"
    assert decoded["data"] == {"code": 429, "message": "slow down"}


@pytest.mark.parametrize("value", [None, "", 7, "x" * 65, ["g"], {"id": "g"}])
def test_field_str_rejects(value: object) -> None:
    with pytest.raises(BadRequest):
        field_str({"group_id": value}, "group_id")


def test_field_str_accepts_and_reports_missing() -> None:
    assert field_str({"group_id": "g"}, "group_id") == "g"
    with pytest.raises(BadRequest, match="group_id"):
        field_str({}, "group_id")


@pytest.mark.parametrize("value", [True, False, -1, 1.0, "3", None, 2**62 + 1, [1]])
def test_field_int_rejects(value: object) -> None:
    with pytest.raises(BadRequest):
        field_int({"seq": value}, "seq")


def test_field_int_default_bounds_and_required() -> None:
    assert field_int({"seq": 0}, "seq") == 0
    assert field_int({}, "after_seq", default=0) == 0
    assert field_int({"limit": 5}, "limit", default=50, lo=1, hi=10) == 5
    with pytest.raises(BadRequest):
        field_int({"limit": 11}, "limit", default=50, lo=1, hi=10)
    with pytest.raises(BadRequest, match="required"):
        field_int({}, "seq")


@pytest.mark.parametrize("value", ["a\x00b", "\x07", "tab\there", "del\x7f"])
def test_ids_with_control_characters_are_rejected(value: str) -> None:
    with pytest.raises(BadRequest, match="control"):
        field_str({"group_id": value}, "group_id")
    with pytest.raises(BadRequest, match="control"):
        parse(dumps({"type": "ping", "message_id": value}))


def test_ids_with_other_unicode_are_accepted() -> None:
    assert field_str({"group_id": "grüße-漢-😀"}, "group_id") == "grüße-漢-😀"
    assert parse(dumps({"type": "ping", "message_id": "c-\u00a0-é"})).message_id == "c-\u00a0-é"
