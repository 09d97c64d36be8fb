"""The WebSocket route `/api/v1/sessions/{id}/ws?after=N`: hello, replay, then live.

Frames are JSON text with an `event` field (protocol.md section 3). Bad client frames get
an `error` event and the socket stays open; policy failures close it with the code of
the `BridgeError` (protocol.md section 6).
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError
from starlette.requests import HTTPConnection
from starlette.routing import WebSocketRoute
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from bridge.errors import BridgeError, InvalidInput
from bridge.events import Event, text_message
from bridge.hub import Subscriber
from bridge.models import MessageIn, check_session_id, describe_validation_error
from bridge.outbox import Outbox
from bridge.ratelimit import RateLimiter
from bridge.service import BridgeService

__all__ = ["SessionSocket", "routes"]

_REPLAY_PAGE = 500
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


async def session_socket(
    websocket: WebSocket, send: Send, session_id: str, after: str | None
) -> None:
    """Subscribe to one session: hello, replay after `after`, then live until it closes."""
    service: BridgeService = websocket.app.state.service
    try:
        check_session_id(session_id)
        start = _parse_after(after)
        websocket.app.state.auth.check_socket(websocket, session_id)
        info = await service.ensure_session(session_id)
    except BridgeError as exc:
        await websocket.accept()
        await websocket.close(exc.close_code, exc.detail[:120])
        return
    await websocket.accept()
    last_seq = info.last_seq
    del info  # this frame lives as long as the socket: keep it small
    settings = service.settings
    outbox = Outbox(
        send,  # type: ignore[arg-type]  # an ASGI send takes our websocket.send messages
        max_frames=settings.subscriber_buffer,
        max_bytes=settings.subscriber_buffer_bytes,
    )
    async with service.hub.subscribe(session_id, outbox, websocket.close) as sub:
        try:
            subscribers = await service.presence_changed(session_id, +1)
            try:
                await _hello_and_replay(service, sub, last_seq, start, subscribers)
                await _receive(websocket, service, sub)
            finally:
                await service.presence_changed(session_id, -1)
        except (WebSocketDisconnect, OSError):  # OSError: the raw send's "client disconnected"
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


async def _hello_and_replay(
    service: BridgeService, sub: Subscriber, last_seq: int, start: int, subscribers: int
) -> None:
    """Send hello and every stored message after `start`, then go live.

    The subscriber joined the hub before this reads storage, so a message stored
    meanwhile is either read here or held for `go_live`; `seq` drops the overlap.
    """
    info = await service.storage.session_info(sub.session_id)
    bound = info.last_seq if info is not None else last_seq
    epoch = service.epoch(info) if info is not None else ""
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
    cursor = start
    while cursor < bound:
        page = await service.storage.history(
            sub.session_id, after=cursor, before=cursor + _REPLAY_PAGE + 1
        )
        for message in page:
            await sub.outbox.send(Event.message(message).asgi)
            sub.last_seq = message.seq
            replayed.add(message.id)
        cursor = page[-1].seq if page else cursor + _REPLAY_PAGE
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
