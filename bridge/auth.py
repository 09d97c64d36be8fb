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
from typing import NamedTuple

import jwt
from starlette.requests import HTTPConnection

from bridge.errors import Forbidden, NotFound, StorageUnavailable, Unauthorized

__all__ = ["Auth", "SocketPass", "Token"]

_ALGORITHM = "HS256"
_LABEL = b"streamlit-bridge session token\0"


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
        self._signing: bytes | None = None  # set by `start`
        self._origins = frozenset(o.rstrip("/") for o in allowed_origins)
        self._any_origin = "*" in self._origins
        self._ttl = token_ttl_s

    def start(self, secret: bytes) -> None:
        """Derive the token signing key from `secret` (`BRIDGE_TOKEN_SECRET`, or the
        store's random one) and the API key; called once at startup, before serving.

        A token goes to browsers. Signed with a hash of the API key alone, it would let
        its holder test guesses of a weak key offline; with an HMAC keyed by a random
        256-bit secret, it says nothing about the key. The key is still mixed in, so
        changing it voids every token.
        """
        if self._key is not None:
            self._signing = hmac.new(secret, _LABEL + self._key, hashlib.sha256).digest()

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
        signing = self._signing_key()
        if signing is None:
            raise NotFound("no API key is configured, so subscriptions need no token")
        now = int(time.time())
        claims = {"sub": session_id, "iat": now, "exp": now + self._ttl}
        return Token(jwt.encode(claims, signing, algorithm=_ALGORITHM), session_id, now + self._ttl)

    def check_socket(self, conn: HTTPConnection, session_id: str) -> SocketPass | None:
        """Raise `Forbidden` for a foreign Origin, `Unauthorized` for a missing or bad token.

        With an API key configured, return what the verified token says (see `SocketPass`);
        without one, None."""
        origin = conn.headers.get("origin")
        if origin is not None and not self._any_origin and origin.rstrip("/") not in self._origins:
            raise Forbidden(f"origin {origin[:80]} is not allowed (BRIDGE_ALLOWED_ORIGINS)")
        signing = self._signing_key()
        if signing is None:
            return None
        token = conn.query_params.get("token") or _bearer(conn)
        if not token:
            raise Unauthorized("a session token is needed: ?token= (POST /sessions/{id}/token)")
        try:
            claims = jwt.decode(
                token, signing, algorithms=[_ALGORITHM], options={"require": ["exp", "sub"]}
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("session token expired") from None
        except jwt.InvalidTokenError:
            raise Unauthorized("invalid session token") from None
        if claims.get("sub") != session_id:
            raise Forbidden("this token is for another session")
        # Keyed by claims, not the token's text: one minting has one (session, issued-at)
        # pair however the token is spelled.
        return SocketPass(f"token {session_id} {claims.get('iat')}", int(claims["exp"]))

    def _signing_key(self) -> bytes | None:
        if self._key is None:
            return None
        if self._signing is None:  # not started: only possible before the app serves
            raise StorageUnavailable("session tokens are not available yet: starting up")
        return self._signing


class SocketPass(NamedTuple):
    """What a verified session token lets a socket do."""

    client: str
    """Counts this socket against `sockets_per_client_max` (one per minted token)."""
    expires_at: int
    """Unix time of the token's `exp`: the socket is closed with 1008 then."""
