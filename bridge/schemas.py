"""Response shapes for the OpenAPI description (the routes serialise by hand, for speed;
these describe what they send, and schemathesis checks that the two agree).

The message, the Listen answer and the template are the wire shapes of `bridge.wire`,
described from their declarations there, never copied: `MessageOut` is `StoredMessage`
itself and `ListenAnswer` is built from `StoredMessage`'s fields plus `Listened`'s.
"""

from __future__ import annotations

import dataclasses
from typing import Any, get_type_hints

from pydantic import BaseModel, create_model

from bridge.wire import Listened, StoredMessage

__all__ = [
    "ERRORS",
    "ErrorBody",
    "ListenAnswer",
    "MessageOut",
    "SessionOut",
    "StopOut",
    "TokenOut",
]


class ErrorBody(BaseModel):
    """Every 4xx and 503 answer."""

    detail: str


MessageOut = StoredMessage
"""A stored message (OpenAPI describes `StoredMessage`'s fields)."""


def _listen_answer() -> type[BaseModel]:
    """The Listen answer as sent: a stored message's fields, flat, plus `Listened`'s own
    fields but `message` (`attempt` as declared there, `history` as a list of messages)."""
    message = get_type_hints(StoredMessage)
    fields: dict[str, Any] = {
        f.name: (message[f.name], ... if f.default is dataclasses.MISSING else f.default)
        for f in dataclasses.fields(StoredMessage)
        if f.init
    }
    own = get_type_hints(Listened)
    for f in dataclasses.fields(Listened):
        if f.name == "history":
            fields[f.name] = (list[StoredMessage], ...)
        elif f.name != "message":
            fields[f.name] = (own[f.name], f.default)
    model: type[BaseModel] = create_model(
        "ListenAnswer",
        __doc__="A Listen answer: the message and the session's messages before it.",
        **fields,
    )
    return model


ListenAnswer = _listen_answer()


class SessionOut(BaseModel):
    """`GET /api/v1/sessions/{id}`."""

    session_id: str
    created_at: float
    last_seq: int
    message_count: int
    subscribers: int
    epoch: str


class TokenOut(BaseModel):
    """`POST /api/v1/sessions/{id}/token`."""

    token: str
    session_id: str
    expires_at: int


class StopOut(BaseModel):
    """`POST /api/v1/sessions/{id}/stop`: the stop is on its way to every instance."""

    session_id: str
    stopping: bool


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description}


ERRORS: dict[int | str, dict[str, Any]] = {
    401: _error("API key missing or wrong (only when BRIDGE_API_KEY is set)"),
    403: _error("cross-site request refused (Origin, Sec-Fetch-* headers)"),
    404: _error("no such session, message or route"),
    408: _error("a streamed body stalled or went on too long"),
    409: _error("idempotency key already used for a different message"),
    413: _error("content or body over the size limit"),
    421: _error("Host header not served here (BRIDGE_ALLOWED_HOSTS)"),
    422: _error("invalid input; `detail` says what was wrong"),
    429: _error("rate limit, Listen waiter limit or session quota; see Retry-After"),
    503: _error("storage unavailable; nothing was changed, retry later"),
}
"""The error answers any `/api/v1` route may give."""
