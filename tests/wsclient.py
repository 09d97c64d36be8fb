"""Small helpers for talking to the bridge's WebSocket in tests."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

Event = dict[str, Any]


def ws_connect(base: str, session: str, after: int | None = None, **kwargs: Any) -> Any:
    """`async with ws_connect(bridge.ws_url, "s", after=3) as ws:`"""
    query = "" if after is None else f"?after={after}"
    return connect(f"{base}/api/v1/sessions/{session}/ws{query}", compression=None, **kwargs)


async def recv(ws: ClientConnection, timeout: float = 5.0) -> Event:
    """The next event, or TimeoutError after `timeout` seconds."""
    raw = await asyncio.wait_for(ws.recv(), timeout)
    event: Event = json.loads(raw)
    return event


async def recv_until(
    ws: ClientConnection, done: Callable[[Event], bool], timeout: float = 10.0
) -> list[Event]:
    """Events up to and including the first for which `done` is true."""
    events: list[Event] = []
    async with asyncio.timeout(timeout):
        while True:
            event = await recv(ws, timeout)
            events.append(event)
            if done(event):
                return events


async def recv_messages(ws: ClientConnection, count: int, timeout: float = 10.0) -> list[Event]:
    """The next `count` stored messages (`message` or `stream.end` events), skipping others."""
    got: list[Event] = []
    async with asyncio.timeout(timeout):
        while len(got) < count:
            event = await recv(ws, timeout)
            if event["event"] in ("message", "stream.end"):
                got.append(event["message"])
    return got
