"""bridge.events: each event's frame is built once, is the JSON of its data, and survives
the trip between instances (`from_frame`)."""

from __future__ import annotations

import json

from bridge.events import ALL_SESSIONS, Event
from bridge.models import Draft, StoredMessage


def _msg(role: str = "user", content: str = "héllo", seq: int = 3) -> StoredMessage:
    return StoredMessage.from_draft("s", seq, Draft.build(role, content, id="m-1"))


def test_a_message_event_carries_the_message_json_and_its_seq() -> None:
    message = _msg()
    event = Event.message(message)
    assert event.kind == "message" and event.seq == 3 and event.session_id == "s"
    assert json.loads(event.frame) == {"event": "message", "seq": 3, "message": message.to_dict()}
    assert event.data == {"seq": 3, "message": message.to_dict()}
    assert message.to_json() in event.frame  # the stored JSON text itself, not re-encoded
    assert "héllo" in event.frame  # UTF-8 as is, no \\u escapes


def test_the_asgi_message_is_built_once_from_the_frame() -> None:
    event = Event.of("s", "presence", subscribers=2)
    assert event.asgi == {"type": "websocket.send", "text": event.frame}
    assert event.frame == '{"event":"presence","subscribers":2}'  # compact, event first
    assert event.seq is None


def test_a_stream_end_carries_its_stream_id_and_the_stored_message() -> None:
    message = _msg(role="ai", content="Hello!", seq=7)
    event = Event.stream_end("abc", message)
    assert event.kind == "stream.end" and event.seq == 7
    assert json.loads(event.frame) == {
        "event": "stream.end",
        "stream_id": "abc",
        "seq": 7,
        "message": message.to_dict(),
    }


def test_from_frame_rebuilds_an_event_from_another_instance() -> None:
    for original in (
        Event.message(_msg()),
        Event.stream_end("abc", _msg(role="ai")),
        Event.of("s", "stream.delta", stream_id="abc", delta="x"),
        Event.of(ALL_SESSIONS, "reset"),
    ):
        again = Event.from_frame(original.session_id, original.frame, born=12.5)
        assert again == original  # same session, kind, data and seq
        assert again.frame is original.frame and again.born == 12.5
    # Only stored messages carry a seq, whatever else a frame holds.
    assert Event.from_frame("s", '{"event":"presence","seq":4,"subscribers":1}').seq is None


def test_user_message_is_what_listen_waits_for() -> None:
    assert Event.message(_msg(role="user")).user_message
    assert not Event.message(_msg(role="ai")).user_message
    assert not Event.stream_end("abc", _msg(role="ai")).user_message
    assert not Event.of("s", "presence", subscribers=1).user_message


def test_equality_ignores_the_frame_text_and_the_time_of_birth() -> None:
    a = Event("s", "x", {"k": 1}, frame='{"event":"x","k":1}', born=1.0)
    b = Event("s", "x", {"k": 1}, frame='{"k":1,"event":"x"}', born=2.0)
    assert a == b
    assert a != Event("s", "x", {"k": 2})
