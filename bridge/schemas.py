"""Response shapes for the OpenAPI description (the routes serialise by hand, for speed;
these models document what they send, and schemathesis checks that the two agree)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

__all__ = ["ERRORS", "ErrorBody", "ListenAnswer", "MessageOut", "SessionOut", "TokenOut"]


class ErrorBody(BaseModel):
    """Every 4xx and 503 answer."""

    detail: str


class MessageOut(BaseModel):
    """A stored message."""

    id: str
    session_id: str
    seq: int
    role: str
    content: str
    type: str
    created_at: float


class ListenAnswer(MessageOut):
    """A Listen answer: the message and the session's messages before it."""

    attempt: int = 1
    history: list[MessageOut]


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
