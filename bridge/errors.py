"""The bridge's one exception tree; each error carries its HTTP status and close code.

    BridgeError                  500 / 1011  (never raised bare)
    ├── InvalidInput             422 / 1007  bad session id, role, type, JSON shape
    │   ├── PayloadTooLarge      413 / 1009  content or body over the configured limit
    │   └── TimedOut             408 / 1008  a streamed body stalled or ran too long
    ├── NotFound                 404 / 4004  unknown session, no message yet
    ├── Unauthorized             401 / 1008  missing or wrong API key / token
    ├── Forbidden                403 / 1008  origin not allowed, token for another session
    ├── RateLimited              429 / 1013  too many requests from one client
    │   └── QuotaExceeded        429 / 1013  a fixed cap reached (sessions, sockets)
    ├── Conflict                 409 / 1008  idempotency key reused with other content
    └── StorageUnavailable       503 / 1011  the store cannot be reached or is full

`app.py` maps the tree to responses in one handler; `ws.py` maps it to `error` events
or close codes. A Listen call that times out is not an error: it answers 204.
"""

from __future__ import annotations

__all__ = [
    "BridgeError",
    "Conflict",
    "Forbidden",
    "InvalidInput",
    "NotFound",
    "PayloadTooLarge",
    "QuotaExceeded",
    "RateLimited",
    "SessionDeleted",
    "StorageUnavailable",
    "TimedOut",
    "Unauthorized",
]


class BridgeError(Exception):
    """Root of every error the bridge reports to a client."""

    status: int = 500
    close_code: int = 1011
    # True when the rest of a request's body is of no use (a streamed reply ended by the
    # bridge): the answer closes the connection, so that a sender still writing stops.
    ends_upload: bool = False

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class InvalidInput(BridgeError):
    """The request is malformed or violates a validation rule."""

    status = 422
    close_code = 1007


class PayloadTooLarge(InvalidInput):
    """A message or request body exceeds the configured size limit."""

    status = 413
    close_code = 1009


class TimedOut(InvalidInput):
    """A streamed request body sent nothing for too long, or went on too long."""

    status = 408
    close_code = 1008


class NotFound(BridgeError):
    """The named session or message does not exist."""

    status = 404
    close_code = 4004


class SessionDeleted(NotFound):
    """The session was deleted while a reply streamed into it."""

    ends_upload = True


class Unauthorized(BridgeError):
    """Credentials are missing or wrong."""

    status = 401
    close_code = 1008


class Forbidden(BridgeError):
    """Credentials are valid but do not allow this action."""

    status = 403
    close_code = 1008


class RateLimited(BridgeError):
    """The client sent more requests than its limit allows."""

    status = 429
    close_code = 1013

    def __init__(self, detail: str, retry_after: float) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class QuotaExceeded(RateLimited):
    """A fixed cap is reached (sessions in the store, sockets per client or in total).
    Waiting helps only if something else goes away, so Retry-After is a hint, not a promise."""

    def __init__(self, detail: str, retry_after: float = 5.0) -> None:
        super().__init__(detail, retry_after)


class Conflict(BridgeError):
    """An idempotency key was reused for a different message."""

    status = 409
    close_code = 1008


class StorageUnavailable(BridgeError):
    """The store failed; nothing was changed and the request may be retried."""

    status = 503
    close_code = 1011
