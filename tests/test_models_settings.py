"""Validation of session ids, messages, templates and settings; chunk decoding."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest

from bridge.broker import open_backend
from bridge.chunks import decode_chunks
from bridge.errors import InvalidInput, PayloadTooLarge
from bridge.events import Event
from bridge.jsontext import dumps
from bridge.models import MessageIn, StoredMessage, Template, check_session_id
from bridge.settings import DEFAULT_STORE, Settings
from tests.support import bridge_env


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
    assert open_backend("memory://", s).storage.url == "memory://"
    assert open_backend("sqlite:///data/x.db", s).storage.url == "sqlite:///data/x.db"
    for bad in ("postgres://x", "sqlite://", "nothing"):
        with pytest.raises(InvalidInput, match="store URL"):
            open_backend(bad, s)


async def _chunks(parts: list[bytes], ndjson: bool, max_line: int = 10_000) -> list[str]:
    async def gen() -> AsyncIterator[bytes]:
        for p in parts:
            yield p

    return [c async for c in decode_chunks(gen(), ndjson=ndjson, max_line=max_line)]


async def test_decode_plain_and_ndjson_chunks() -> None:
    euro = "€".encode()
    assert "".join(await _chunks([b"a", euro[:1], euro[1:], b"b"], False)) == "a€b"
    lines = [b'{"delta": "x"}\n{"del', b'ta": "y"}\n', b'{"delta": "z"}']
    assert await _chunks(lines, True) == ["x", "y", "z"]
    with pytest.raises(InvalidInput, match="not UTF-8"):
        await _chunks([b"\xff\xfe"], False)
    with pytest.raises(InvalidInput, match="delta"):
        await _chunks([b'{"text": "x"}\n'], True)


async def test_ndjson_line_refused_as_soon_as_it_passes_the_bound() -> None:
    pieces = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal pieces
        while pieces < 10_000:  # 10 MB if nothing stopped it
            pieces += 1
            yield b"x" * 1000

    with pytest.raises(PayloadTooLarge, match="without a newline"):
        async for _ in decode_chunks(endless(), ndjson=True, max_line=5000):
            pass
    assert pieces == 6  # refused on the piece that passed 5,000 characters, not at the end
    # A line exactly at the bound, split across pieces, still goes through.
    line = b'{"delta": "' + b"y" * 4985 + b'"}'
    assert len(line) == 4998
    got = await _chunks([line[:100], line[100:], b"\n", b'{"delta": "z"}'], True, max_line=4998)
    assert got == ["y" * 4985, "z"]


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


def test_serving_beyond_loopback_needs_a_key_or_an_explicit_flag() -> None:
    with pytest.raises(InvalidInput, match="without an API key"):
        Settings.load({}, host="0.0.0.0")
    assert Settings.load({"BRIDGE_API_KEY": "k" * 32}, host="0.0.0.0").api_key
    assert Settings.load({"BRIDGE_ALLOW_NO_KEY": "1"}, host="0.0.0.0").allow_no_key
    assert Settings.load({}, host="127.0.0.2").on_loopback
    with pytest.raises(InvalidInput, match="not a bool"):
        Settings.load({"BRIDGE_ALLOW_NO_KEY": "perhaps"})
    # The real command says so and exits before binding anything.
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bridge",
            "serve",
            "--host",
            "0.0.0.0",
            "--port",
            "0",
            "--store",
            "memory://",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=bridge_env(),
    )
    assert done.returncode == 2
    assert "refusing to serve on 0.0.0.0 without an API key" in done.stderr
    assert "--allow-no-key" in done.stderr


def test_token_secret_must_be_long_enough() -> None:
    with pytest.raises(InvalidInput, match="at least 32 bytes"):
        Settings.load({"BRIDGE_TOKEN_SECRET": "short"})
    assert Settings.load({"BRIDGE_TOKEN_SECRET": "s" * 32}).token_secret == "s" * 32
