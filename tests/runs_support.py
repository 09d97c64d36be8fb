"""What tests of runs share: a bridge's run settings, posting a turn, reading run events."""

from __future__ import annotations

from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection

from bridge.wire import WELCOME_ID
from tests.wsclient import recv_until, ws_connect

Event = dict[str, Any]
RUN_WAIT = 60.0  # bound of a wait for one run's events (a loaded machine, a cold server)


def runner_env(url: str, flow_id: str, api_key: str, **extra: str) -> dict[str, str]:
    """The environment of a bridge that runs `flow_id` on the Langflow at `url`."""
    return {
        "BRIDGE_LANGFLOW_URL": url,
        "BRIDGE_FLOW": flow_id,
        "BRIDGE_LANGFLOW_API_KEY": api_key,
        **extra,
    }


async def say(http: httpx.AsyncClient, session: str, text: str) -> int:
    """Post a user message; its seq."""
    resp = await http.post(
        f"/api/v1/sessions/{session}/messages", json={"role": "user", "content": text}
    )
    assert resp.status_code == 200, resp.text
    return int(resp.json()["seq"])


async def until_run_end(ws: ClientConnection, timeout: float = RUN_WAIT) -> list[Event]:
    """Every event up to the next `run.end`."""
    return await recv_until(ws, lambda e: e["event"] == "run.end", timeout)


def of(events: list[Event], kind: str) -> list[Event]:
    """The events of one kind, in order."""
    return [e for e in events if e["event"] == kind]


async def history(http: httpx.AsyncClient, session: str) -> list[Event]:
    """The session's stored messages."""
    resp = await http.get(f"/api/v1/sessions/{session}/messages")
    assert resp.status_code == 200, resp.text
    return list(resp.json())


async def wait_for_reply(
    http: httpx.AsyncClient, ws_url: str, session: str, replies: int, timeout: float = RUN_WAIT
) -> list[Event]:
    """The session's history once it holds `replies` ai replies (the welcome aside): a
    socket on the session replays what is stored and pushes what comes, so this waits on
    the messages themselves."""
    async with ws_connect(ws_url, session) as ws:
        count = 0
        while count < replies:
            events = await recv_until(
                ws, lambda e: e["event"] in ("message", "stream.end"), timeout
            )
            message = events[-1]["message"]
            count += message["role"] == "ai" and message["id"] != WELCOME_ID
    return await history(http, session)
