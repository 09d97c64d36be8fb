"""Messages, the chat template and session ids: validation only, no I/O."""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from bridge.errors import InvalidInput
from bridge.jsontext import dumps
from bridge.values import value

__all__ = [
    "IMAGE_URL_MAX",
    "RESERVED_IDS",
    "ROLES",
    "Draft",
    "MessageIn",
    "SessionInfo",
    "StoredMessage",
    "Template",
    "check_image_content",
    "check_session_id",
    "check_text",
    "describe_validation_error",
]

ROLES = ("ai", "user")
Role = Literal["ai", "user"]
MessageType = Literal["text", "image"]

_SESSION_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
_MESSAGE_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")

RESERVED_IDS = frozenset({"welcome"})
"""Message ids the bridge gives its own messages (the template's welcome); clients may not."""

IMAGE_URL_MAX = 2048
_IMAGE_URL = re.compile(r"https?://[^\s/?#@\\]+(?:[/?#][^\s\\]*)?", re.IGNORECASE)
_IMAGE_DATA = re.compile(
    r"data:image/(?:png|jpeg|gif|webp|avif|bmp)(?:;[a-z0-9=._+-]+)*;base64,[A-Za-z0-9+/=\s]*",
    re.IGNORECASE,
)


def check_image_content(content: str) -> str:
    """Return `content` if an image message may carry it: an `http(s)` URL (at most
    2048 characters) or a base64 `data:image/...` URI (bounded by the message limit).

    Anything else is refused, local paths above all: the chat page hands image content to
    `st.image`, which opens local files, so a path would read the page's host.
    SVG is refused too (it is a document, not a picture)."""
    if _IMAGE_DATA.fullmatch(content):
        return content
    if len(content) <= IMAGE_URL_MAX and _IMAGE_URL.fullmatch(content):
        return content
    raise ValueError(
        "an image message's content must be an http(s) URL of at most "
        f"{IMAGE_URL_MAX} characters or a base64 data:image/(png|jpeg|gif|webp|avif|bmp) URI; "
        "local paths and other schemes are refused"
    )


def check_text(text: str) -> str:
    """Return `text` if it can be stored as UTF-8. JSON's `\\ud800` escapes decode to lone
    surrogates, which no store can encode: they are refused here, before anything is
    written, rather than failing a commit that other messages share."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"not valid Unicode text: lone surrogate {text[exc.start]!r} at {exc.start}"
        ) from None
    return text


Text = Annotated[str, AfterValidator(check_text)]


def check_session_id(session_id: str) -> str:
    """Return `session_id` if it is a valid id, else raise `InvalidInput` saying why.

    Ids never reach a file path, but `.` and `..` are refused anyway so that no layer
    (a proxy, a log tool, a future backend) can be tricked by them.
    """
    if not _SESSION_ID.fullmatch(session_id) or session_id in (".", ".."):
        shown = session_id if len(session_id) <= 40 else session_id[:40] + "..."
        raise InvalidInput(
            f"invalid session id {shown!r} ({len(session_id)} chars): "
            "use 1-128 of A-Z a-z 0-9 _ . : - and not '.' or '..'"
        )
    return session_id


class MessageIn(BaseModel):
    """A message as a client posts it (HTTP body or WebSocket `message` event)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)

    role: Role
    content: Text
    type: MessageType = "text"
    id: str | None = Field(default=None, pattern=f"^{_MESSAGE_ID.pattern}$", max_length=128)

    @model_validator(mode="after")
    def _check(self) -> MessageIn:
        if self.id in RESERVED_IDS:
            raise ValueError(f"id {self.id!r} is reserved for the bridge's own messages")
        if self.type == "image":
            check_image_content(self.content)
        return self


class Template(BaseModel):
    """The chat template of the documented `POST /api/v1/chats`."""

    model_config = ConfigDict(extra="ignore")

    welcome_msg: Text = Field(default="Hi! How can I help you today?", max_length=10_000)
    input_msg: Text = Field(default="Type a message", max_length=1_000)
    write_speed: float = Field(default=0.05, ge=0.0, le=5.0)
    ai_avatar: Text | None = Field(default=None, max_length=64)
    user_avatar: Text | None = Field(default=None, max_length=64)
    port: int = Field(default=5001, ge=1, le=65535)


@value
class Draft:
    """A validated message not yet stored; `key` makes its publication idempotent."""

    role: str
    content: str
    type: str = "text"
    id: str = ""
    key: str | None = None

    @classmethod
    def build(
        cls,
        role: str,
        content: str,
        type: str = "text",
        id: str | None = None,
        key: str | None = None,
    ) -> Draft:
        """A draft with a fresh id unless one is given; the key defaults to a given id."""
        return cls(role, content, type, id or uuid.uuid4().hex, key or id)


@value
class StoredMessage:
    """A message as stored: the documented `{role, content, type}` plus identity and order."""

    id: str
    session_id: str
    seq: int
    role: str
    content: str
    type: str
    created_at: float
    _json: str = field(default="", init=False, repr=False, compare=False)

    @classmethod
    def from_draft(cls, session_id: str, seq: int, draft: Draft) -> StoredMessage:
        """The stored form of `draft` as message number `seq` of `session_id`."""
        return cls(draft.id, session_id, seq, draft.role, draft.content, draft.type, time.time())

    def to_dict(self) -> dict[str, Any]:
        """The JSON object clients receive."""
        return {
            "id": self.id,
            "session_id": self.session_id,
            "seq": self.seq,
            "role": self.role,
            "content": self.content,
            "type": self.type,
            "created_at": self.created_at,
        }

    def to_json(self) -> str:
        """`to_dict()` as JSON text, encoded once however often it is sent."""
        if not self._json:
            object.__setattr__(self, "_json", dumps(self.to_dict()))
        return self._json


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """What the store knows about one session."""

    session_id: str
    created_at: float
    last_seq: int
    message_count: int


def describe_validation_error(exc: ValidationError) -> str:
    """One readable sentence per problem, e.g. `role: must be one of 'ai', 'user'`."""
    parts = []
    for err in exc.errors(include_url=False):
        where = ".".join(str(p) for p in err.get("loc", ())) or "body"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts)
