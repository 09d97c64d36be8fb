"""Messages as clients post them, drafts, session ids: validation only, no I/O.

The shapes the bridge sends (`StoredMessage`, `Template`) and the content rules shared
with clients (`check_text`, `check_image_content`) are declared in `bridge.wire` and
re-exported here for the server's modules.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from bridge.errors import InvalidInput
from bridge.values import value
from bridge.wire import (
    IMAGE_URL_MAX,
    WELCOME_ID,
    StoredMessage,
    Template,
    Text,
    check_image_content,
    check_text,
)

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

RESERVED_IDS = frozenset({WELCOME_ID})
"""Message ids the bridge gives its own messages (the template's welcome); clients may not."""


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


@value
class Draft:
    """A validated message not yet stored; `key` makes its publication idempotent, and
    `stopped` marks a reply ended early by the user's Stop."""

    role: str
    content: str
    type: str = "text"
    id: str = ""
    key: str | None = None
    stopped: bool = False

    @classmethod
    def build(
        cls,
        role: str,
        content: str,
        type: str = "text",
        id: str | None = None,
        key: str | None = None,
        *,
        stopped: bool = False,
    ) -> Draft:
        """A draft with a fresh id unless one is given; the key defaults to a given id."""
        return cls(role, content, type, id or uuid.uuid4().hex, key or id, stopped)


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
