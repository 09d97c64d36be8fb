"""The WebSocket route `/api/v1/sessions/{id}/ws?after=N`: hello, replay, then live.

Frames are JSON text with an `event` field (protocol.md section 3). Bad client frames get
an `error` event and the socket stays open; policy failures close it with the code of
the `BridgeError` (protocol.md section 6).

Bounds per socket: its history is replayed in pages of about `replay_buffer_bytes`, each
write waiting at most `send_timeout_s` (server.py aborts a connection whose peer stopped
reading); a client (its session token, else its IP address) may hold
`sockets_per_client_max` sockets and the process `sockets_max`, beyond which a socket is
closed with 1013; a socket opened with a session token is closed with 1008 when the token
expires.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from pydantic import ValidationError
from starlette.requests import HTTPConnection
from starlette.routing import WebSocketRoute
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from bridge.auth import SocketPass
from bridge.errors import BridgeError, InvalidInput, QuotaExceeded
from bridge.events import Event, text_message
from bridge.hub import Subscriber, close_reason
from bridge.models import MessageIn, check_session_id, describe_validation_error
from bridge.outbox import Outbox, OutboxClosed
from bridge.paging import history_pages
from bridge.ratelimit import RateLimiter
from bridge.service import BridgeService

__all__ = ["SessionSocket", "SocketLimits", "routes"]

CLOSE_POLICY = 1008
_PONG = json.dumps({"event": "pong"})


def _client(conn: HTTPConnection) -> str:
    return conn.client.host if conn.client else "unknown"


def _error(detail: str) -> str:
    return json.dumps({"event": "error", "detail": detail}, ensure_ascii=False)


class SessionSocket:
    """The ASGI endpoint of `/api/v1/sessions/{id}/ws`.

    A plain ASGI app rather than a FastAPI route so that frames can go to the server's
    `send` directly: Starlette's `WebSocket.send_text` adds three calls and a dict per frame
    per subscriber, the bulk of fan-out's cost above the server's own.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        websocket = WebSocket(scope, receive, send)
        await session_socket(
            websocket, send, scope["path_params"]["session_id"], websocket.query_params.get("after")
        )


routes = [WebSocketRoute("/api/v1/sessions/{session_id}/ws", SessionSocket())]


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


async def session_socket(
    websocket: WebSocket, send: Send, session_id: str, after: str | None
) -> None:
    """Subscribe to one session: hello, replay after `after`, then live until it closes."""
    state = websocket.app.state
    service: BridgeService = state.service
    limits: SocketLimits = state.sockets
    try:
        check_session_id(session_id)
        start = _parse_after(after)
        grant: SocketPass | None = state.auth.check_socket(websocket, session_id)
        client = grant.client if grant is not None else _client(websocket)
        limits.admit(client)
    except BridgeError as exc:
        await _refuse(websocket, exc)
        return
    # This frame lives as long as the socket: keep what it holds small.
    expiry: asyncio.TimerHandle | None = None
    try:
        try:
            info = await service.ensure_session(session_id)
        except BridgeError as exc:
            await _refuse(websocket, exc)
            return
        await websocket.accept()
        last_seq = info.last_seq
        del info
        settings = service.settings
        outbox = Outbox(
            send,  # type: ignore[arg-type]  # an ASGI send takes our websocket.send messages
            max_frames=settings.subscriber_buffer,
            max_bytes=settings.subscriber_buffer_bytes,
        )
        async with service.hub.subscribe(session_id, outbox, websocket.close) as sub:
            if grant is not None:
                # The token let this socket in until its `exp`; no longer.
                loop = asyncio.get_running_loop()
                expiry = loop.call_at(
                    loop.time() + grant.expires_at - time.time(),
                    service.hub.kick,
                    sub,
                    CLOSE_POLICY,
                    "session token expired",
                )
                del grant
            try:
                subscribers = await service.presence_changed(session_id, +1)
                try:
                    await _hello_and_replay(service, sub, last_seq, start, subscribers)
                    await _receive(websocket, service, sub)
                finally:
                    await service.presence_changed(session_id, -1)
            except (WebSocketDisconnect, OSError):  # OSError: the raw send's "disconnected"
                return
    finally:
        if expiry is not None:
            expiry.cancel()
        limits.release(client)


async def _refuse(websocket: WebSocket, exc: BridgeError) -> None:
    """Accept, then close with the error's code and reason: a browser shows neither for
    a handshake refused with an HTTP status."""
    try:
        await websocket.accept()
        await websocket.close(exc.close_code, close_reason(exc.detail))
    except (WebSocketDisconnect, OSError):
        return  # gone already


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


async def _hello_and_replay(
    service: BridgeService, sub: Subscriber, last_seq: int, start: int, subscribers: int
) -> None:
    """Send hello and every stored message after `start`, then go live.

    The subscriber joined the hub before this reads storage, so a message stored
    meanwhile is either read here or held for `go_live`; `seq` drops the overlap.
    History is read in pages of about `replay_buffer_bytes` (`history_pages`): a socket
    holds one page at a time, however large the messages. A subscriber kicked meanwhile
    (held events overflowed, token expired, session deleted) stops here; its close frame
    is on the way and `_receive` sees the disconnect.
    """
    info = await service.storage.session_info(sub.session_id)
    bound = info.last_seq if info is not None else last_seq
    epoch = service.epoch(info) if info is not None else ""
    try:
        await sub.outbox.send(
            Event.of(
                sub.session_id,
                "hello",
                session_id=sub.session_id,
                epoch=epoch,
                last_seq=bound,
                template=service.template.model_dump(),
                subscribers=subscribers,
            ).asgi
        )
        replayed: set[str] = set()
        if info is not None and start < bound:
            pages = history_pages(
                service.storage,
                info,
                after=start,
                budget_bytes=service.settings.replay_buffer_bytes,
            )
            del info
            async for page in pages:
                for message in page:
                    await sub.outbox.send(Event.message(message).asgi)
                    sub.last_seq = message.seq
                    replayed.add(message.id)
                del page  # hold one page at a time, not this one while reading the next
    except OutboxClosed:
        return
    service.hub.go_live(sub, replayed)


async def _receive(websocket: WebSocket, service: BridgeService, sub: Subscriber) -> None:
    while True:
        frame = await websocket.receive()
        if frame["type"] == "websocket.disconnect":
            return
        text = frame.get("text")
        if text is None:
            sub.outbox.put(text_message(_error("send JSON text frames, not binary")))
            continue
        try:
            await _handle(text, websocket, service, sub)
        except BridgeError as exc:
            sub.outbox.put(text_message(_error(exc.detail)))


async def _handle(text: str, websocket: WebSocket, service: BridgeService, sub: Subscriber) -> None:
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
        sub.outbox.put(text_message(_PONG))
    elif kind == "message":
        limiter: RateLimiter = websocket.app.state.rate_limiter
        limiter.take(_client(websocket))
        try:
            message = MessageIn.model_validate(data)
        except ValidationError as exc:
            raise InvalidInput(describe_validation_error(exc)) from None
        await service.post(sub.session_id, message)
    else:
        raise InvalidInput(f"unknown event {str(kind)[:40]!r}: send 'message' or 'ping'")
