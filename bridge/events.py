"""Events the bridge pushes to subscribers, each serialised to its text frame once."""

from __future__ import annotations

import json
import time
from dataclasses import field
from typing import Any

from bridge.jsontext import dumps
from bridge.models import StoredMessage
from bridge.values import value

__all__ = ["ALL_SESSIONS", "Event"]

ALL_SESSIONS = "*"
"""The session id of an event meant for every subscriber (`template`, global `reset`)."""


@value
class Event:
    """One server-to-client event of a session.

    `seq` is set on events that carry a stored message (`message`, `stream.end`):
    a subscriber skips those it already has. `frame` is the JSON text sent on every
    socket, built once however many subscribers there are. `born` is when the bridge
    accepted it (monotonic seconds), for the publish-to-send latency metric.
    """

    session_id: str
    kind: str
    data: dict[str, Any]
    seq: int | None = None
    frame: str = field(default="", compare=False)
    born: float = field(default_factory=time.monotonic, compare=False)
    asgi: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.frame:
            object.__setattr__(self, "frame", dumps({"event": self.kind, **self.data}))
        # The ASGI message every subscriber's socket is handed: built once, shared (the
        # server only reads it).
        self.asgi.update(type="websocket.send", text=self.frame)

    @classmethod
    def message(cls, message: StoredMessage) -> Event:
        """A stored message, live or replayed."""
        # The frame reuses the message's own JSON text: the HTTP answer that stored it
        # sends the same text, so a POST encodes its message once.
        return cls(
            message.session_id,
            "message",
            {"seq": message.seq, "message": message.to_dict()},
            message.seq,
            f'{{"event":"message","seq":{message.seq},"message":{message.to_json()}}}',
        )

    @classmethod
    def stream_end(cls, stream_id: str, message: StoredMessage) -> Event:
        """The streamed reply `stream_id` is stored whole as `message`."""
        return cls(
            message.session_id,
            "stream.end",
            {"stream_id": stream_id, "seq": message.seq, "message": message.to_dict()},
            message.seq,
            f'{{"event":"stream.end","stream_id":{dumps(stream_id)},"seq":{message.seq},'
            f'"message":{message.to_json()}}}',
        )

    @classmethod
    def of(cls, session_id: str, kind: str, /, **data: Any) -> Event:
        """Any other event: `stream.start`, `stream.delta`, `template`, `presence`, ..."""
        return cls(session_id, kind, data)

    @classmethod
    def from_frame(cls, session_id: str, frame: str, born: float | None = None) -> Event:
        """Rebuild an event from its frame (an event that crossed from another instance)."""
        data = json.loads(frame)
        kind = data.pop("event")
        seq = data.get("seq") if kind in ("message", "stream.end") else None
        return cls(
            session_id, kind, data, seq, frame, born if born is not None else time.monotonic()
        )

    @property
    def user_message(self) -> bool:
        """True for a stored message from the `user` role (what Listen waits for)."""
        if self.seq is None:
            return False
        return bool(self.data["message"]["role"] == "user")
