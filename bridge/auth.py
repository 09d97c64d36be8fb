"""Who may do what: the API key for HTTP, session tokens and the Origin allowlist for sockets.

With no API key configured (the loopback default) HTTP is open and sockets need no token;
the Origin check applies either way, because browsers apply no CORS to WebSockets and any
page the user visits could otherwise subscribe to a session on localhost.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass

import jwt
from starlette.requests import HTTPConnection

from bridge.errors import Forbidden, NotFound, Unauthorized

__all__ = ["Auth", "Token"]

_ALGORITHM = "HS256"


def _bearer(conn: HTTPConnection) -> str | None:
    """The credential of an `Authorization: Bearer ...` header, if any."""
    scheme, _, value = conn.headers.get("authorization", "").partition(" ")
    return value.strip() or None if scheme.lower() == "bearer" else None


@dataclass(frozen=True, slots=True)
class Token:
    """A minted session token."""

    token: str
    session_id: str
    expires_at: int

    def to_dict(self) -> dict[str, object]:
        """The JSON of `POST /api/v1/sessions/{id}/token`."""
        return {"token": self.token, "session_id": self.session_id, "expires_at": self.expires_at}


class Auth:
    """Checks API keys, mints and verifies session tokens, checks socket origins."""

    def __init__(
        self, api_key: str | None, allowed_origins: tuple[str, ...], token_ttl_s: int
    ) -> None:
        self._key = api_key.encode() if api_key else None
        # Tokens are signed with a key derived from the API key: always 32 bytes (HS256's
        # recommended minimum) however short the API key, and never the key itself.
        self._signing = (
            hashlib.sha256(b"streamlit-bridge session token\0" + self._key).digest()
            if self._key
            else None
        )
        self._origins = frozenset(o.rstrip("/") for o in allowed_origins)
        self._any_origin = "*" in self._origins
        self._ttl = token_ttl_s

    @property
    def enabled(self) -> bool:
        """True when an API key is configured."""
        return self._key is not None

    def check_request(self, conn: HTTPConnection) -> None:
        """Raise `Unauthorized` unless the request carries the API key (when one is set)."""
        if self._key is None:
            return
        given = conn.headers.get("x-api-key") or _bearer(conn)
        if given is None:
            raise Unauthorized(
                "this bridge needs an API key: send x-api-key or Authorization: Bearer"
            )
        if not hmac.compare_digest(given.encode(), self._key):
            raise Unauthorized("wrong API key")

    def mint(self, session_id: str) -> Token:
        """A token that opens `session_id`'s WebSocket until it expires."""
        if self._signing is None:
            raise NotFound("no API key is configured, so subscriptions need no token")
        now = int(time.time())
        claims = {"sub": session_id, "iat": now, "exp": now + self._ttl}
        return Token(
            jwt.encode(claims, self._signing, algorithm=_ALGORITHM), session_id, now + self._ttl
        )

    def check_socket(self, conn: HTTPConnection, session_id: str) -> None:
        """Raise `Forbidden` for a foreign Origin, `Unauthorized` for a missing or bad token."""
        origin = conn.headers.get("origin")
        if origin is not None and not self._any_origin and origin.rstrip("/") not in self._origins:
            raise Forbidden(f"origin {origin[:80]} is not allowed (BRIDGE_ALLOWED_ORIGINS)")
        if self._signing is None:
            return
        token = conn.query_params.get("token") or _bearer(conn)
        if not token:
            raise Unauthorized("a session token is needed: ?token= (POST /sessions/{id}/token)")
        try:
            claims = jwt.decode(
                token, self._signing, algorithms=[_ALGORITHM], options={"require": ["exp", "sub"]}
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("session token expired") from None
        except jwt.InvalidTokenError:
            raise Unauthorized("invalid session token") from None
        if claims.get("sub") != session_id:
            raise Forbidden("this token is for another session")
