"""Validation of session ids, messages, templates and settings; chunk decoding."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from bridge.chunks import decode_chunks
from bridge.errors import InvalidInput
from bridge.events import Event
from bridge.jsontext import dumps
from bridge.models import MessageIn, StoredMessage, Template, check_session_id
from bridge.settings import DEFAULT_STORE, Settings
from bridge.storage import open_storage


@pytest.mark.parametrize("good", ["a", "A-b_c.d:e", "x" * 128, "..a", "a.."])
def test_valid_session_ids(good: str) -> None:
    assert check_session_id(good) == good


@pytest.mark.parametrize("bad", ["", ".", "..", "a/b", "a b", "x" * 129, "é", "a\x00", "../etc"])
def test_invalid_session_ids_say_why(bad: str) -> None:
    with pytest.raises(InvalidInput, match="invalid session id"):
        check_session_id(bad)


def test_message_defaults_and_rejections() -> None:
    m = MessageIn.model_validate({"role": "user", "content": "hi"})
    assert (m.type, m.id) == ("text", None)
    for bad in (
        {"role": "bot", "content": "x"},
        {"role": "ai", "content": "x", "type": "audio"},
        {"role": "ai", "content": "x", "id": "a/b"},
        {"role": "ai", "content": "x", "unknown": True},
    ):
        with pytest.raises(ValueError):
            MessageIn.model_validate(bad)


def test_template_accepts_documented_fields_and_bounds_them() -> None:
    t = Template.model_validate(
        {"welcome_msg": "w", "input_msg": "i", "write_speed": 0.2, "port": 5001, "other": 1}
    )
    assert t.write_speed == 0.2 and t.ai_avatar is None
    with pytest.raises(ValueError):
        Template.model_validate({"write_speed": 99})


def test_settings_precedence_and_bounds() -> None:
    env = {
        "BRIDGE_PORT": "9000",
        "BRIDGE_ALLOWED_ORIGINS": "http://a, http://b",
        "BRIDGE_STORE": "",
    }
    s = Settings.load(env, port=9100)
    assert s.port == 9100 and s.allowed_origins == ("http://a", "http://b")
    assert s.store == DEFAULT_STORE
    with pytest.raises(InvalidInput, match="BRIDGE_PORT"):
        Settings.load({"BRIDGE_PORT": "eighty"})
    with pytest.raises(InvalidInput, match="subscriber_buffer"):
        Settings.load({}, subscriber_buffer=0)
    with pytest.raises(InvalidInput, match="sqlite_synchronous"):
        Settings.load({"BRIDGE_SQLITE_SYNCHRONOUS": "maybe"})


def test_store_urls() -> None:
    s = Settings()
    assert open_storage("memory://", s).url == "memory://"
    assert open_storage("sqlite:///data/x.db", s).url == "sqlite:///data/x.db"
    for bad in ("postgres://x", "sqlite://", "nothing"):
        with pytest.raises(InvalidInput, match="store URL"):
            open_storage(bad, s)


async def _chunks(parts: list[bytes], ndjson: bool) -> list[str]:
    async def gen() -> AsyncIterator[bytes]:
        for p in parts:
            yield p

    return [c async for c in decode_chunks(gen(), ndjson=ndjson)]


async def test_decode_plain_and_ndjson_chunks() -> None:
    euro = "€".encode()
    assert "".join(await _chunks([b"a", euro[:1], euro[1:], b"b"], False)) == "a€b"
    lines = [b'{"delta": "x"}\n{"del', b'ta": "y"}\n', b'{"delta": "z"}']
    assert await _chunks(lines, True) == ["x", "y", "z"]
    with pytest.raises(InvalidInput, match="not UTF-8"):
        await _chunks([b"\xff\xfe"], False)
    with pytest.raises(InvalidInput, match="delta"):
        await _chunks([b'{"text": "x"}\n'], True)


@pytest.mark.parametrize("content", ["plain", 'quotes " and \\ and\nnewlines', "émoji 🙂 ✓"])
def test_message_frames_built_from_its_json_match_generic_encoding(content: str) -> None:
    message = StoredMessage("id-1", "s", 7, "ai", content, "text", 1795692725.0969362)
    assert json.loads(message.to_json()) == message.to_dict()
    assert message.to_json() is message.to_json()  # encoded once
    for event, expected in (
        (Event.message(message), {"event": "message", "seq": 7, "message": message.to_dict()}),
        (
            Event.stream_end('st"1', message),
            {"event": "stream.end", "stream_id": 'st"1', "seq": 7, "message": message.to_dict()},
        ),
    ):
        assert event.frame == dumps(expected)  # same text the generic path would write
        assert event.asgi == {"type": "websocket.send", "text": event.frame}
