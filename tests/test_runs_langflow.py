"""Runs against a real `lfx serve`: the bridge runs a flow for every user message and
streams its reply into the session (issue 14; docs/protocol.md section 7).

The flows are in tests/flows/ (a scripted chat model that streams offline); their model
writes a trace of each reply (start, then finished / cancelled / closed / failed)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection

from tests.conftest import StartApp, StartBridge
from tests.lfx_support import LFX_GROUP, RunningLfx, StartLfx
from tests.wsclient import recv, recv_until, ws_connect

pytest_plugins = ["tests.lfx_support"]
pytestmark = [pytest.mark.langflow, pytest.mark.slow]

Event = dict[str, Any]


def run_env(lfx: RunningLfx, flow: str, **extra: str) -> dict[str, str]:
    """A bridge that runs `flow` of `lfx` for each user message."""
    return {
        "BRIDGE_LANGFLOW_URL": lfx.url,
        "BRIDGE_FLOW": lfx.flow_ids[flow],
        "BRIDGE_LANGFLOW_API_KEY": lfx.api_key,
        **extra,
    }


async def say(http: httpx.AsyncClient, session: str, text: str) -> int:
    """Post a user message; its seq."""
    resp = await http.post(
        f"/api/v1/sessions/{session}/messages", json={"role": "user", "content": text}
    )
    assert resp.status_code == 200, resp.text
    return int(resp.json()["seq"])


async def until_run_end(ws: ClientConnection, timeout: float = 30.0) -> list[Event]:
    """Every event up to the next `run.end`."""
    return await recv_until(ws, lambda e: e["event"] == "run.end", timeout)


def of(events: list[Event], kind: str) -> list[Event]:
    return [e for e in events if e["event"] == kind]


async def history(http: httpx.AsyncClient, session: str) -> list[Event]:
    resp = await http.get(f"/api/v1/sessions/{session}/messages")
    assert resp.status_code == 200
    return list(resp.json())


@LFX_GROUP
async def test_reply_streams_in_order_and_is_stored_once(
    lfx_server: RunningLfx, start_app: StartApp
) -> None:
    app = start_app(env=run_env(lfx_server, "stream_chat"))
    async with (
        httpx.AsyncClient(base_url=app.url, timeout=30) as http,
        ws_connect(app.ws_url, "tokens") as ws,
        ws_connect(app.ws_url, "tokens") as second_tab,
    ):
        await recv(ws)
        await recv(second_tab)
        seq = await say(http, "tokens", "hello there, bridge")
        events = await until_run_end(ws)
        kinds = [e["event"] for e in events if e["event"] != "message"]
        # run.start before the reply's stream, run.end after it is stored.
        assert kinds[0] == "run.start" and kinds[1] == "stream.start", kinds
        assert kinds[-2:] == ["stream.end", "run.end"], kinds
        start = of(events, "run.start")[0]
        assert start["reply_to"] == seq
        assert of(events, "stream.start")[0]["run_id"] == start["run_id"]
        deltas = [e["delta"] for e in of(events, "stream.delta")]
        assert len(deltas) >= 2  # streamed, not one block
        reply = "You said: hello there, bridge"
        assert "".join(deltas) == reply
        end = of(events, "stream.end")[0]
        assert end["message"]["content"] == reply and end["message"]["role"] == "ai"
        assert of(events, "run.end")[0] == {
            "event": "run.end",
            "run_id": start["run_id"],
            "outcome": "done",
            "reason": "",
        }
        # The other tab saw the same run.
        other = await until_run_end(second_tab)
        assert of(other, "stream.end")[0]["message"] == end["message"]
        stored = await history(http, "tokens")
        assert [(m["role"], m["content"]) for m in stored[1:]] == [
            ("user", "hello there, bridge"),
            ("ai", reply),
        ]
        # Listen is off while the bridge answers by itself (it would steal messages).
        listen = await http.get("/api/v1/listen/message", params={"timeout": 0})
        assert listen.status_code == 409 and "answers user messages itself" in listen.text


@LFX_GROUP
async def test_the_flow_memory_follows_the_session(
    lfx_server: RunningLfx, start_app: StartApp
) -> None:
    app = start_app(env=run_env(lfx_server, "memory_chat"))
    async with (
        httpx.AsyncClient(base_url=app.url, timeout=30) as http,
        ws_connect(app.ws_url, "mem-a") as ws,
    ):
        await recv(ws)
        await say(http, "mem-a", "my name is Ada")
        await until_run_end(ws)
        await say(http, "mem-a", "what is my name?")
        second = of(await until_run_end(ws), "stream.end")[0]["message"]["content"]
        assert "my name is Ada" in second, second
        # Another session's flow memory is its own.
        await say(http, "mem-b", "hello")
        await wait_for_reply(http, "mem-b", 1)
        other = (await history(http, "mem-b"))[-1]["content"]
        assert "Ada" not in other, other


async def wait_for_reply(
    http: httpx.AsyncClient, session: str, replies: int, timeout: float = 30.0
) -> list[Event]:
    """The session's history once it holds `replies` ai replies (the welcome aside)."""
    async with asyncio.timeout(timeout):
        while True:
            stored = await history(http, session)
            if len([m for m in stored[1:] if m["role"] == "ai"]) >= replies:
                return stored
            await asyncio.sleep(0.05)  # poll interval of the store, bounded by the timeout


@LFX_GROUP
@pytest.mark.parametrize(("flow", "words"), [("failing", ""), ("failing_midway", "You said: boom")])
async def test_a_failing_flow_is_reported_and_nothing_is_stored(
    lfx_server: RunningLfx, start_app: StartApp, flow: str, words: str
) -> None:
    app = start_app(env=run_env(lfx_server, flow))
    async with (
        httpx.AsyncClient(base_url=app.url, timeout=30) as http,
        ws_connect(app.ws_url, "fails") as ws,
    ):
        await recv(ws)
        await say(http, "fails", "boom please")
        events = await until_run_end(ws)
        end = of(events, "run.end")[0]
        assert end["outcome"] == "error"
        assert "the model exploded" in end["reason"], end
        assert end["reason"].startswith("The flow failed"), end
        assert of(events, "stream.abort"), events  # a half-written reply is withdrawn
        assert not of(events, "stream.end")
        text = "".join(e["delta"] for e in of(events, "stream.delta"))
        assert words.startswith(text) and (text or not words)  # what came before the failure
        stored = await history(http, "fails")
        assert [m["role"] for m in stored[1:]] == ["user"]  # the question stays, no reply
        # The failed message is settled: the next one runs (and fails the same way),
        # and the first is not run again.
        await say(http, "fails", "second")
        again = of(await until_run_end(ws), "run.start")[0]
        assert again["reply_to"] == stored[-1]["seq"] + 1


@LFX_GROUP
async def test_sessions_run_at_once_and_each_in_order(
    lfx_server: RunningLfx, start_app: StartApp
) -> None:
    """Two sessions' runs overlap; one session's second message waits for its first."""
    app = start_app(env=run_env(lfx_server, "slow_chat"))
    seen: list[tuple[float, str, Event]] = []

    async def watch(ws: ClientConnection, session: str, runs: int) -> None:
        ends = 0
        while ends < runs:
            event = await recv(ws, 30)
            if event["event"].startswith("run."):
                seen.append((time.monotonic(), session, event))
                ends += event["event"] == "run.end"

    async with (
        httpx.AsyncClient(base_url=app.url, timeout=30) as http,
        ws_connect(app.ws_url, "order-a") as wa,
        ws_connect(app.ws_url, "order-b") as wb,
    ):
        await recv(wa)
        await recv(wb)
        watching = [asyncio.create_task(watch(wa, "a", 2)), asyncio.create_task(watch(wb, "b", 1))]
        a1 = await say(http, "order-a", "first of a")
        a2 = await say(http, "order-a", "second of a")
        b1 = await say(http, "order-b", "only b")

        def starts() -> set[tuple[str, int]]:
            return {(s, e["reply_to"]) for _, s, e in seen if e["event"] == "run.start"}

        # Both sessions run (slow_chat takes about 10 s a reply) while a's second waits.
        await asyncio.wait_for(_until(lambda: len(starts()) >= 2), 20)
        assert starts() == {("a", a1), ("b", b1)}
        await http.post("/api/v1/sessions/order-a/stop")
        await asyncio.wait_for(_until(lambda: ("a", a2) in starts()), 20)
        await http.post("/api/v1/sessions/order-a/stop")
        await http.post("/api/v1/sessions/order-b/stop")
        await asyncio.wait_for(asyncio.gather(*watching), 30)
    order = [(s, e["event"], e.get("reply_to")) for _, s, e in seen]
    a_events = [(kind, to) for s, kind, to in order if s == "a"]
    assert a_events == [("run.start", a1), ("run.end", None), ("run.start", a2), ("run.end", None)]
    assert all(e["outcome"] == "stopped" for _, _, e in seen if e["event"] == "run.end")
    first_b_start = next(i for i, (s, k, _) in enumerate(order) if s == "b" and k == "run.start")
    first_a_end = next(i for i, (s, k, _) in enumerate(order) if s == "a" and k == "run.end")
    assert first_b_start < first_a_end  # b did not wait for a


async def _until(predicate: Callable[[], bool]) -> None:
    while not predicate():
        await asyncio.sleep(0.02)  # re-check after the watchers ran; bounded by wait_for
