"""The bridge's data shapes as the client sees them: messages and the chat template.

Plain frozen dataclasses built from the bridge's JSON; no I/O and no Streamlit, so the
page, the demo bot and other Python programs share them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["Listened", "Message", "Template"]


@dataclass(frozen=True, slots=True)
class Message:
    """A stored message: the documented `{role, content, type}` plus identity and order."""

    seq: int
    role: str
    content: str
    type: str = "text"
    id: str = ""
    session_id: str = ""
    created_at: float = 0.0

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Message:
        """Build from the bridge's JSON object; unknown fields are ignored."""
        return cls(
            seq=int(data.get("seq") or 0),
            role=str(data.get("role", "")),
            content=str(data.get("content", "")),
            type=str(data.get("type") or "text"),
            id=str(data.get("id") or ""),
            session_id=str(data.get("session_id") or ""),
            created_at=float(data.get("created_at") or 0.0),
        )

    def to_json(self) -> dict[str, Any]:
        """The bridge's JSON shape."""
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Template:
    """The chat template of `POST /api/v1/chats`; defaults match the bridge's."""

    welcome_msg: str = "Hi! How can I help you today?"
    input_msg: str = "Type a message"
    write_speed: float = 0.05
    ai_avatar: str | None = None
    user_avatar: str | None = None
    port: int = 5001

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> Template:
        """Build from the bridge's JSON object; missing fields keep their defaults."""
        data = data or {}
        default = cls()
        return cls(
            welcome_msg=str(data.get("welcome_msg", default.welcome_msg) or ""),
            input_msg=str(data.get("input_msg", default.input_msg) or ""),
            write_speed=float(data.get("write_speed", default.write_speed) or 0.0),
            ai_avatar=data.get("ai_avatar") or None,
            user_avatar=data.get("user_avatar") or None,
            port=int(data.get("port", default.port) or default.port),
        )

    def to_json(self) -> dict[str, Any]:
        """The JSON body of `POST /api/v1/chats`."""
        return asdict(self)

    def avatar(self, role: str) -> str | None:
        """The avatar for `role`, or None for Streamlit's default icon."""
        return self.ai_avatar if role == "ai" else self.user_avatar


@dataclass(frozen=True, slots=True)
class Listened:
    """What `GET /api/v1/listen/message` hands out: a user message and what came before it."""

    message: Message
    history: tuple[Message, ...]

    @property
    def session_id(self) -> str:
        """The session the message belongs to."""
        return self.message.session_id

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Listened:
        """Build from Listen's JSON answer (the message's fields plus `history`)."""
        history = tuple(Message.from_json(m) for m in data.get("history") or ())
        return cls(Message.from_json(data), history)
