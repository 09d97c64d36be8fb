"""Refusing requests that a browser sent on another site's behalf (pure ASGI, cheap).

WebSockets have their own Origin check (`auth.Auth.check_socket`). For HTTP, a page on
any site could otherwise make the user's browser post to, reset or drain (Listen) a
bridge on localhost; and a DNS-rebound name could reach it as if it were that site. So:

- a request whose `Origin` is present and not allowed, or that the browser marks
  `Sec-Fetch-Site: cross-site`, is refused with 403;
- a request whose `Host` is not an allowed host is refused with 421 (DNS rebinding).
  A bridge bound to loopback allows loopback names by default; bound elsewhere, any.
- Listen (`GET /api/v1/listen/message`, `GET /api/v1/sessions/{id}/listen`) is a GET
  that takes a message from the queue, so a page could drain it with a mere `<img>` or
  `fetch(..., {mode: "no-cors"})`, and a page on another localhost port counts as
  same-site. Its callers are servers (Langflow components, curl), never browsers, so
  a Listen request that carries any sign of a browser is refused with 403: an `Origin`
  header, `Sec-Fetch-Site` other than `same-origin`/`none`, `Sec-Fetch-Mode` other than
  `cors`/`same-origin`, or `Sec-Fetch-Dest` other than `empty`. The one case left is a
  browser too old to send Fetch Metadata, tricked into a GET without `Origin`: an API
  key closes it, since a cross-site page cannot add `x-api-key`.

Server-side callers (Langflow, the chat page's Python, curl) send none of these headers.

With an API key configured, every `/api/v1` HTTP request must carry it (401 otherwise):
checked here, before routing, so that the check costs nothing when no key is set.
"""

from __future__ import annotations

import json

from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

from bridge.auth import Auth
from bridge.errors import BridgeError

__all__ = ["BrowserGuard", "is_listen_path"]

_LISTEN_ANY = "/api/v1/listen/message"
_SESSIONS = "/api/v1/sessions/"
_LISTEN_SUFFIX = "/listen"
# Fetch Metadata values a same-origin script's fetch() may carry; a browser sends other
# values for navigations, subresources (<img>, <script>, ...) and no-cors requests.
_LISTEN_SITES = frozenset({b"same-origin", b"none"})
_LISTEN_MODES = frozenset({b"cors", b"same-origin"})
_LISTEN_DESTS = frozenset({b"empty"})


def is_listen_path(path: str) -> bool:
    """True for the two Listen routes (which claim a message although they are GETs)."""
    if path == _LISTEN_ANY:
        return True
    if not (path.startswith(_SESSIONS) and path.endswith(_LISTEN_SUFFIX)):
        return False
    session_id = path[len(_SESSIONS) : -len(_LISTEN_SUFFIX)]
    return bool(session_id) and "/" not in session_id


def _listen_refusal(headers: list[tuple[bytes, bytes]]) -> str | None:
    """Why a Listen request looks like a browser's, or None for a server-side caller."""
    for name, value in headers:
        lowered = value.strip().lower()
        if name == b"origin":
            return "an Origin header (Listen is for server-side callers, not pages)"
        if name == b"sec-fetch-site" and lowered not in _LISTEN_SITES:
            return f"Sec-Fetch-Site: {_shown(value)}"
        if name == b"sec-fetch-mode" and lowered not in _LISTEN_MODES:
            return f"Sec-Fetch-Mode: {_shown(value)}"
        if name == b"sec-fetch-dest" and lowered not in _LISTEN_DESTS:
            return f"Sec-Fetch-Dest: {_shown(value)}"
    return None


def _shown(value: bytes) -> str:
    return value[:40].decode("latin-1")


class BrowserGuard:
    """ASGI middleware applying the Origin, Sec-Fetch-Site and Host checks to HTTP."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        auth: Auth,
        allowed_origins: tuple[str, ...],
        allowed_hosts: tuple[str, ...],
    ) -> None:
        self._app = app
        self._auth = auth
        self._origins = frozenset(o.rstrip("/").encode() for o in allowed_origins)
        self._any_origin = "*" in allowed_origins
        self._hosts = frozenset(h.lower().encode() for h in allowed_hosts)
        self._any_host = "*" in allowed_hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        refusal = self._refusal(scope["headers"])
        if refusal is None and is_listen_path(scope["path"]):
            reason = _listen_refusal(scope["headers"])
            if reason is not None:
                refusal = 403, f"browser request to Listen refused: {reason}"
        if refusal is None and self._auth.enabled and scope["path"].startswith("/api/v1/"):
            try:
                self._auth.check_request(HTTPConnection(scope))
            except BridgeError as exc:
                refusal = exc.status, exc.detail
        if refusal is None:
            await self._app(scope, receive, send)
            return
        status, detail = refusal
        body = json.dumps({"detail": detail}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    def _refusal(self, headers: list[tuple[bytes, bytes]]) -> tuple[int, str] | None:
        for name, value in headers:
            if name == b"origin":
                if not self._any_origin and value.rstrip(b"/") not in self._origins:
                    shown = value[:80].decode("latin-1")
                    return 403, f"cross-site request refused: origin {shown} is not allowed"
            elif name == b"sec-fetch-site":
                if value == b"cross-site" and not self._any_origin:
                    return 403, "cross-site request refused (Sec-Fetch-Site: cross-site)"
            elif name == b"host" and not self._any_host:
                host = value.lower()
                if host.startswith(b"["):
                    host = host[: host.find(b"]") + 1]
                else:
                    host = host.partition(b":")[0]
                if host not in self._hosts:
                    shown = value[:80].decode("latin-1")
                    return 421, f"host {shown} is not served here (BRIDGE_ALLOWED_HOSTS)"
        return None
