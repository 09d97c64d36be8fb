"""The WebSocket route `/api/v1/sessions/{id}/ws?after=N`: parse, subscribe, read frames.

The transport only: the subscription itself (hello, replay, live, presence, the token's
expiry) is `BridgeService.subscribe`. Frames are JSON text with an `event` field
(protocol.md section 3). Bad client frames get an `error` event and the socket stays
open; policy failures close it with the code of the `BridgeError` (protocol.md section 6).

Bounds per socket: its history is replayed in pages of about `replay_buffer_bytes`, each
write waiting at most `send_timeout_s` (server.py aborts a connection whose peer stopped
reading); a client (its session token, else its IP address) may hold
`sockets_per_client_max` sockets and the process `sockets_max`, beyond which a socket is
closed with 1013; a socket opened with a session token is closed with 1008 when the token
expires.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError
from starlette.requests import HTTPConnection
from starlette.routing import BaseRoute, WebSocketRoute
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from bridge.auth import Auth
from bridge.errors import BridgeError, InvalidInput, QuotaExceeded
from bridge.events import Event
from bridge.hub import Subscriber, close_reason
from bridge.models import MessageIn, check_session_id, describe_validation_error
from bridge.ratelimit import RateLimiter
from bridge.service import BridgeService

__all__ = ["SessionSocket", "SocketLimits", "routes"]

PATH = "/api/v1/sessions/{session_id}/ws"
_PONG = Event.of("", "pong")  # the same frame for every ping: built once


def _client(conn: HTTPConnection) -> str:
    return conn.client.host if conn.client else "unknown"


def _error(session_id: str, detail: str) -> Event:
    return Event.of(session_id, "error", detail=detail)


def routes(service: BridgeService, auth: Auth, limiter: RateLimiter) -> list[BaseRoute]:
    """The WebSocket route, its endpoint holding what it needs (built once per app)."""
    settings = service.settings
    limits = SocketLimits(settings.sockets_max, settings.sockets_per_client_max)
    return [WebSocketRoute(PATH, SessionSocket(service, auth, limiter, limits))]


class SessionSocket:
    """The ASGI endpoint of `/api/v1/sessions/{id}/ws?after=N`: parse, subscribe, and
    read the client's frames until the socket closes.

    A plain ASGI app rather than a FastAPI route so that frames can go to the server's
    `send` directly: Starlette's `WebSocket.send_text` adds three calls and a dict per frame
    per subscriber, the bulk of fan-out's cost above the server's own.
    """

    __slots__ = ("_auth", "_limiter", "_limits", "_service")

    def __init__(
        self, service: BridgeService, auth: Auth, limiter: RateLimiter, limits: SocketLimits
    ) -> None:
        self._service = service
        self._auth = auth
        self._limiter = limiter
        self._limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        websocket = WebSocket(scope, receive, send)
        session_id: str = scope["path_params"]["session_id"]
        # This frame lives as long as the socket: keep what it holds small.
        try:
            check_session_id(session_id)
            after = _parse_after(websocket.query_params.get("after"))
            grant = self._auth.check_socket(websocket, session_id)
            client = grant.client if grant is not None else _client(websocket)
            self._limits.admit(client)
        except BridgeError as exc:
            await _refuse(websocket, exc)
            return
        expires_at = grant.expires_at if grant is not None else None
        del grant
        try:
            await websocket.accept()
            subscription = self._service.subscribe(
                session_id,
                after,
                send,  # type: ignore[arg-type]  # an ASGI send takes our websocket.send messages
                websocket.close,
                expires_at=expires_at,
            )
            async with subscription as sub:
                await self._receive(websocket, sub)
        except BridgeError as exc:  # the session could not be opened (or the store failed)
            await _close(websocket, exc)
        except (WebSocketDisconnect, OSError):  # OSError: the raw send's "disconnected"
            return
        finally:
            self._limits.release(client)

    async def _receive(self, websocket: WebSocket, sub: Subscriber) -> None:
        while True:
            frame = await websocket.receive()
            if frame["type"] == "websocket.disconnect":
                return
            text = frame.get("text")
            if text is None:
                sub.put(_error(sub.session_id, "send JSON text frames, not binary"))
                continue
            try:
                await self._handle(text, websocket, sub)
            except BridgeError as exc:
                sub.put(_error(sub.session_id, exc.detail))

    async def _handle(self, text: str, websocket: WebSocket, sub: Subscriber) -> None:
        try:
            data: Any = json.loads(text)
        except ValueError as exc:
            raise InvalidInput(f"frame is not JSON: {exc}") from None
        except RecursionError:
            raise InvalidInput("frame is nested too deeply") from None
        if not isinstance(data, dict):
            raise InvalidInput('a frame must be a JSON object with an "event" field')
        kind = data.pop("event", None)
        if kind == "ping":
            sub.put(_PONG)
        elif kind == "message":
            self._limiter.take(_client(websocket))  # by address, as HTTP publishing is
            try:
                message = MessageIn.model_validate(data)
            except ValidationError as exc:
                raise InvalidInput(describe_validation_error(exc)) from None
            await self._service.post(sub.session_id, message)
        elif kind == "stop":
            self._limiter.take(_client(websocket))
            await self._service.stop_replies(sub.session_id)
        else:
            raise InvalidInput(
                f"unknown event {str(kind)[:40]!r}: send 'message', 'stop' or 'ping'"
            )


class SocketLimits:
    """Open sockets per client and in total, capped at `sockets_per_client_max` and
    `sockets_max`: a client that opens sockets without end would otherwise hold file
    descriptors and memory without end.

    A client is its session token (one per minting) when the bridge has an API key, else
    its IP address (as uvicorn reports it: behind a trusted proxy, X-Forwarded-For).
    """

    __slots__ = ("_counts", "_max_per_client", "_max_total", "total")

    def __init__(self, max_total: int, max_per_client: int) -> None:
        self._max_total = max_total
        self._max_per_client = max_per_client
        self._counts: dict[str, int] = {}
        self.total = 0

    def admit(self, client: str) -> None:
        """Count one more socket of `client`, or raise `QuotaExceeded` (close 1013)."""
        if self.total >= self._max_total:
            raise QuotaExceeded(
                f"the bridge has its maximum of {self._max_total} sockets open "
                "(BRIDGE_SOCKETS_MAX); try again later"
            )
        count = self._counts.get(client, 0)
        if count >= self._max_per_client:
            raise QuotaExceeded(
                f"this client has its maximum of {self._max_per_client} sockets open "
                "(BRIDGE_SOCKETS_PER_CLIENT_MAX)"
            )
        self._counts[client] = count + 1
        self.total += 1

    def release(self, client: str) -> None:
        """Count one socket of `client` out (it was admitted)."""
        count = self._counts[client] - 1
        if count:
            self._counts[client] = count
        else:
            del self._counts[client]
        self.total -= 1


async def _refuse(websocket: WebSocket, exc: BridgeError) -> None:
    """Accept, then close with the error's code and reason: a browser shows neither for
    a handshake refused with an HTTP status."""
    try:
        await websocket.accept()
    except (WebSocketDisconnect, OSError):
        return  # gone already
    await _close(websocket, exc)


async def _close(websocket: WebSocket, exc: BridgeError) -> None:
    """Close an accepted socket with the error's code and reason."""
    try:
        await websocket.close(exc.close_code, close_reason(exc.detail))
    except (WebSocketDisconnect, OSError, RuntimeError):  # RuntimeError: closed already
        return


def _parse_after(after: str | None) -> int:
    if after is None or after == "":
        return 0
    try:
        value = int(after)
    except ValueError:
        raise InvalidInput(f"after must be a whole number, not {after[:20]!r}") from None
    if value < 0:
        raise InvalidInput("after must be 0 or more")
    return value
