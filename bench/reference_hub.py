"""The minimal reference hub every bridge figure is compared with.

What a competent first version of the hub looks like, with nothing tuned for the benchmark:
FastAPI + pydantic, uvicorn with `--ws websockets-sansio` (uvicorn's defaults otherwise, so
uvloop and httptools when installed), messages kept in memory, and fan-out as a plain loop
`for ws in subscribers: await ws.send_text(frame)` over a frame serialised once per message.
No batching, no queues, no history replay, no limits, and no deliberate slowness either.

Routes (only those the benchmark uses, with the bridge's shapes):

- `POST /api/v1/sessions/{id}/messages` `{"role", "content"}` -> 200 with the stored message
  `{"id", "session_id", "seq", "role", "content", "type", "created_at"}`, after the frame
  `{"event": "message", "seq": N, "message": {...}}` went to every subscriber of the session.
- `WebSocket /api/v1/sessions/{id}/ws`: `{"event": "hello", "session_id", "epoch", "last_seq",
  "subscribers"}` once the subscriber is registered, then the live `message` frames.
- `GET /healthz` -> 200.

Run: `python -m bench.reference_hub --port 7900` (127.0.0.1 only).
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from collections import deque
from collections.abc import Sequence
from typing import Any

import uvicorn
from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from pydantic import BaseModel

__all__ = ["Hub", "MessageIn", "create_app", "main"]

# Kept per session so memory stays bounded over a long run; the benchmark never reads it back.
HISTORY_PER_SESSION = 1000


class MessageIn(BaseModel):
    """A message to publish, as the bridge accepts it."""

    role: str
    content: str
    type: str = "text"


class Hub:
    """Sessions in memory: seq counters, recent messages and subscribers.

    Subscribers live in a dict used as an ordered set: registration order is send order, and
    removal is O(1).
    """

    def __init__(self) -> None:
        self.epoch = uuid.uuid4().hex
        self._seq: dict[str, int] = {}
        self._history: dict[str, deque[dict[str, Any]]] = {}
        self._subscribers: dict[str, dict[WebSocket, None]] = {}

    def append(self, session_id: str, body: MessageIn) -> dict[str, Any]:
        """Assign the next seq and keep the message; no await, so seq order is call order."""
        seq = self._seq.get(session_id, 0) + 1
        self._seq[session_id] = seq
        message = {
            "id": uuid.uuid4().hex,
            "session_id": session_id,
            "seq": seq,
            "role": body.role,
            "content": body.content,
            "type": body.type,
            "created_at": time.time(),
        }
        history = self._history.get(session_id)
        if history is None:
            history = self._history[session_id] = deque(maxlen=HISTORY_PER_SESSION)
        history.append(message)
        return message

    def last_seq(self, session_id: str) -> int:
        """The seq of the session's newest message, 0 if none."""
        return self._seq.get(session_id, 0)

    def subscribe(self, session_id: str, ws: WebSocket) -> int:
        """Register `ws`; returns the session's subscriber count."""
        subs = self._subscribers.setdefault(session_id, {})
        subs[ws] = None
        return len(subs)

    def unsubscribe(self, session_id: str, ws: WebSocket) -> None:
        """Forget `ws`, and the session's subscriber set once empty."""
        subs = self._subscribers.get(session_id)
        if subs is not None:
            subs.pop(ws, None)
            if not subs:
                del self._subscribers[session_id]

    def subscribers(self, session_id: str) -> list[WebSocket]:
        """A snapshot: the send loop awaits, and subscribers may leave meanwhile."""
        return list(self._subscribers.get(session_id, ()))


def create_app() -> FastAPI:
    """Build the app; the hub lives in this closure, not at module level."""
    app = FastAPI(title="reference hub", docs_url=None, redoc_url=None, openapi_url=None)
    hub = Hub()

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/api/v1/sessions/{session_id}/messages")
    async def post_message(session_id: str, body: MessageIn) -> dict[str, Any]:
        message = hub.append(session_id, body)
        frame = json.dumps({"event": "message", "seq": message["seq"], "message": message})
        for ws in hub.subscribers(session_id):
            try:
                await ws.send_text(frame)
            except Exception:  # a subscriber that went away must not fail the publisher
                hub.unsubscribe(session_id, ws)
        return message

    @app.websocket("/api/v1/sessions/{session_id}/ws")
    async def subscribe(ws: WebSocket, session_id: str) -> None:
        await ws.accept()
        # Register before `hello`, so a client that saw `hello` misses no live message.
        count = hub.subscribe(session_id, ws)
        try:
            await ws.send_text(
                json.dumps(
                    {
                        "event": "hello",
                        "session_id": session_id,
                        "epoch": hub.epoch,
                        "last_seq": hub.last_seq(session_id),
                        "subscribers": count,
                    }
                )
            )
            while True:  # ends with the connection; client frames are read and ignored
                await ws.receive_text()
        except WebSocketDisconnect:
            pass
        finally:
            hub.unsubscribe(session_id, ws)

    return app


def main(argv: Sequence[str] | None = None) -> None:
    """Serve the reference hub on 127.0.0.1 until interrupted."""
    parser = argparse.ArgumentParser(prog="python -m bench.reference_hub", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    print(f"reference hub on http://127.0.0.1:{args.port} (memory)", flush=True)
    uvicorn.run(
        create_app,
        factory=True,
        host="127.0.0.1",
        port=args.port,
        ws="websockets-sansio",
        log_level="warning",
        access_log=False,  # a log line per request would measure the logger, not the hub
    )


if __name__ == "__main__":
    main()
