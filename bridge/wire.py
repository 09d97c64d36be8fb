"""The wire: every shape, default and rule that the bridge and its clients must agree on,
declared once.

The server (`bridge.*`), every client (`streamlit_client`, the `streamlit-bridge` commands)
and the OpenAPI description (`bridge.schemas`) take these from here; `listener.js` gets the
close-code table in its component data (`close_policy()`), so it has no copy of its own.
This module does no I/O and imports only the standard library, pydantic and two tiny
helpers (`bridge.values`, `bridge.jsontext`), so a client importing it loads no server.

- defaults: `DEFAULT_BRIDGE_URL` (from `DEFAULT_HOST`, `DEFAULT_PORT`), `DEFAULT_PAGE_PORT`,
  `page_origins()`, `WELCOME_ID`;
- shapes: `StoredMessage` (a message as stored and sent), `Template` (the chat template),
  `Listened` (what Listen hands out); each has `from_dict` (lenient, for clients reading
  the bridge's JSON) and `to_dict` (the JSON object);
- rules: `check_text`, `check_image_content` (what an image message may carry);
- close codes: `CLOSE_CODES`, `after_close(code, reason)`: what a client does when the
  bridge closes its socket (stop, or come back, and how).
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, Final

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

from bridge.jsontext import dumps
from bridge.values import value

if TYPE_CHECKING:
    from bridge.models import Draft

__all__ = [
    "BACKOFF_BASE_S",
    "BACKOFF_MAX_S",
    "CLOSE_CODES",
    "CLOSE_GOING_AWAY",
    "CLOSE_INVALID",
    "CLOSE_POLICY",
    "CLOSE_SESSION_DELETED",
    "CLOSE_TOO_LARGE",
    "CLOSE_TOO_SLOW",
    "CLOSE_TRY_LATER",
    "DEFAULT_BRIDGE_URL",
    "DEFAULT_HOST",
    "DEFAULT_PAGE_PORT",
    "DEFAULT_PORT",
    "IMAGE_URL_MAX",
    "TOKEN_EXPIRED",
    "WELCOME_ID",
    "AfterClose",
    "CloseCode",
    "Listened",
    "StoredMessage",
    "Template",
    "Text",
    "after_close",
    "backoff_s",
    "check_image_content",
    "check_text",
    "close_policy",
    "page_origins",
]

# -- names and defaults (protocol.md section 1) -------------------------------------------

DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 7881
DEFAULT_BRIDGE_URL: Final = f"http://{DEFAULT_HOST}:{DEFAULT_PORT}"
"""Where clients look for the bridge unless told otherwise (`--bridge`, `BRIDGE_URL`)."""

DEFAULT_PAGE_PORT: Final = 5001
"""The chat page's port (also the template's documented `port` field)."""

LOOPBACK_NAMES: Final = ("localhost", "127.0.0.1", "[::1]")

WELCOME_ID: Final = "welcome"
"""The id of every session's first message, the template's welcome: pages find it by it."""


def page_origins(port: int = DEFAULT_PAGE_PORT) -> tuple[str, ...]:
    """The browser origins of a chat page served on loopback at `port`."""
    return tuple(f"http://{host}:{port}" for host in LOOPBACK_NAMES)


# -- content rules ------------------------------------------------------------------------

IMAGE_URL_MAX: Final = 2048
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
    SVG is refused too (it is a document, not a picture). The bridge applies this rule to
    new messages, the page again to whatever it is about to draw."""
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


# -- shapes -------------------------------------------------------------------------------


@value
class StoredMessage:
    """A message as stored and sent: the documented `{role, content, type}` plus identity
    and order. The server builds one per message and encodes it once (`to_json`); clients
    read it with `from_dict`. OpenAPI describes it from these fields (the cache is not one)."""

    id: str
    session_id: str
    seq: int
    role: str
    content: str
    type: str
    created_at: float
    stopped: bool = False
    """A reply ended early by the user's Stop; sent as `"stopped": true` only when true."""
    _json: Annotated[str, Field(exclude=True), SkipJsonSchema()] = field(
        default="", init=False, repr=False, compare=False
    )

    @classmethod
    def from_draft(cls, session_id: str, seq: int, draft: Draft) -> StoredMessage:
        """The stored form of `draft` as message number `seq` of `session_id`."""
        return cls(
            draft.id,
            session_id,
            seq,
            draft.role,
            draft.content,
            draft.type,
            time.time(),
            draft.stopped,
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StoredMessage:
        """Read the bridge's JSON object; missing fields get empty values, unknown ones
        are ignored (a client keeps working with a newer bridge)."""
        return cls(
            str(data.get("id") or ""),
            str(data.get("session_id") or ""),
            int(data.get("seq") or 0),
            str(data.get("role", "")),
            str(data.get("content", "")),
            str(data.get("type") or "text"),
            float(data.get("created_at") or 0.0),
            data.get("stopped") is True,
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON object clients receive; `"stopped": true` only on a stopped reply (no
        key otherwise, so that the frames of every other message stay as they were)."""
        data: dict[str, Any] = {
            "id": self.id,
            "session_id": self.session_id,
            "seq": self.seq,
            "role": self.role,
            "content": self.content,
            "type": self.type,
            "created_at": self.created_at,
        }
        if self.stopped:
            data["stopped"] = True
        return data

    def to_json(self) -> str:
        """`to_dict()` as JSON text, encoded once however often it is sent."""
        if not self._json:
            object.__setattr__(self, "_json", dumps(self.to_dict()))
        return self._json


class Template(BaseModel):
    """The chat template of the documented `POST /api/v1/chats`; the bridge validates it
    with these bounds, and every client reads it into this same model."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    welcome_msg: Text = Field(default="Hi! How can I help you today?", max_length=10_000)
    input_msg: Text = Field(default="Type a message", max_length=1_000)
    write_speed: float = Field(default=0.05, ge=0.0, le=5.0)
    ai_avatar: Text | None = Field(default=None, max_length=64)
    user_avatar: Text | None = Field(default=None, max_length=64)
    port: int = Field(default=DEFAULT_PAGE_PORT, ge=1, le=65535)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Template:
        """Read the bridge's JSON object: missing or null fields keep their defaults, an
        empty avatar means none, unknown fields are ignored."""
        given = {k: v for k, v in (data or {}).items() if v is not None}
        for name in ("ai_avatar", "user_avatar"):
            if given.get(name) == "":
                del given[name]
        return cls.model_validate(given)

    def to_dict(self) -> dict[str, Any]:
        """The JSON body of `POST /api/v1/chats`."""
        return self.model_dump()

    def avatar(self, role: str) -> str | None:
        """The avatar for `role`, or None for the page's default icon."""
        return self.ai_avatar if role == "ai" else self.user_avatar


@dataclass(frozen=True, slots=True)
class Listened:
    """What a Listen call hands out: the claimed user message, the session's messages
    before it, and which attempt this is (1, or more when earlier claims went unanswered).

    On the wire it is flat: the message's own fields plus `attempt` and `history`
    (`bridge.schemas.ListenAnswer` is derived from this and `StoredMessage`)."""

    message: StoredMessage
    history: Sequence[StoredMessage] = ()
    attempt: int = 1

    @property
    def session_id(self) -> str:
        """The session the message belongs to."""
        return self.message.session_id

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Listened:
        """Read Listen's JSON answer."""
        history = tuple(StoredMessage.from_dict(m) for m in data.get("history") or ())
        return cls(StoredMessage.from_dict(data), history, int(data.get("attempt") or 1))

    def to_dict(self) -> dict[str, Any]:
        """The documented Listen answer (plus id, seq, created_at and attempt)."""
        return {
            **self.message.to_dict(),
            "attempt": self.attempt,
            "history": [m.to_dict() for m in self.history],
        }


# -- close codes (protocol.md section 6) --------------------------------------------------

CLOSE_GOING_AWAY: Final = 1001
CLOSE_INVALID: Final = 1007
CLOSE_POLICY: Final = 1008
CLOSE_TOO_LARGE: Final = 1009
CLOSE_TRY_LATER: Final = 1013
CLOSE_TOO_SLOW: Final = 4000
CLOSE_SESSION_DELETED: Final = 4004

BACKOFF_BASE_S: Final = 0.1
BACKOFF_MAX_S: Final = 5.0
"""Reconnect backoff: attempt n waits `min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2**n)`, times a
random 0.5-1 (so that clients spread out); `BACK_OFF` waits the maximum at once."""

TOKEN_EXPIRED: Final = "session token expired"
"""The reason of a 1008 close at a session token's expiry: the one 1008 worth coming back
from, with a new token."""


class AfterClose(StrEnum):
    """What a client does when the bridge closes its socket."""

    RESUME = "resume"
    """Reconnect with `after=<last seq>`, backing off while attempts fail."""
    BACK_OFF = "back-off"
    """The bridge is overloaded: reconnect, but only after the longest backoff."""
    NEW_TOKEN = "new-token"
    """The session token expired: get a new one, then resume (stop if none can be had)."""
    STOP = "stop"
    """Reconnecting cannot help: stop and say why."""


@dataclass(frozen=True, slots=True)
class CloseCode:
    """One row of the close-code table."""

    code: int
    meaning: str
    then: AfterClose


CLOSE_CODES: Final[Mapping[int, CloseCode]] = {
    row.code: row
    for row in (
        CloseCode(CLOSE_GOING_AWAY, "the bridge is shutting down", AfterClose.RESUME),
        CloseCode(1006, "the connection dropped (no close frame)", AfterClose.RESUME),
        CloseCode(CLOSE_INVALID, "invalid subscription (bad session id or after)", AfterClose.STOP),
        CloseCode(
            CLOSE_POLICY,
            "refused by the bridge (origin not allowed, or session token missing or wrong)",
            AfterClose.STOP,
        ),
        CloseCode(CLOSE_TOO_LARGE, "a frame over the size limit", AfterClose.STOP),
        CloseCode(1011, "the bridge could not send to this socket", AfterClose.RESUME),
        CloseCode(1012, "the bridge is restarting", AfterClose.RESUME),
        CloseCode(CLOSE_TRY_LATER, "the bridge is busy: try again later", AfterClose.BACK_OFF),
        CloseCode(CLOSE_TOO_SLOW, "too slow: this socket fell behind", AfterClose.RESUME),
        CloseCode(CLOSE_SESSION_DELETED, "the session was deleted", AfterClose.STOP),
    )
}
"""Every close code a client may see, what it means, and what the client does then.
A code not listed here is treated as `RESUME`."""


def after_close(code: int | None, reason: str = "") -> AfterClose:
    """What to do after the bridge closed the socket with `code` and `reason` (None: the
    connection failed or dropped without a close frame)."""
    if code == CLOSE_POLICY and reason == TOKEN_EXPIRED:
        return AfterClose.NEW_TOKEN
    row = CLOSE_CODES.get(code if code is not None else 1006)
    return row.then if row is not None else AfterClose.RESUME


def backoff_s(attempt: int, *, busy: bool = False, max_s: float = BACKOFF_MAX_S) -> float:
    """The wait before reconnect attempt `attempt` (1, 2, ...), before jitter."""
    return max_s if busy else min(max_s, BACKOFF_BASE_S * 2.0 ** min(attempt, 16))


def close_policy() -> dict[str, Any]:
    """The close-code table and the backoff as JSON, for `listener.js`, which applies
    `after_close`'s rule to it (the token-expired pair first, then the code, else
    `default`) and `backoff_s`'s formula."""
    codes = {str(c.code): {"then": c.then, "meaning": c.meaning} for c in CLOSE_CODES.values()}
    return {
        "codes": codes,
        "token_expired": {"code": CLOSE_POLICY, "reason": TOKEN_EXPIRED},
        "default": AfterClose.RESUME,
        "backoff_ms": {"base": round(BACKOFF_BASE_S * 1000), "max": round(BACKOFF_MAX_S * 1000)},
    }
