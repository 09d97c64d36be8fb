"""Resuming on the raw WebSocket protocol when the history changed under the client.

protocol.md: `hello.epoch` names the lifetime of a session's history; a client whose
remembered epoch differs throws its copy away and resubscribes without `after`. These
tests hold a real bridge to that: the epoch changes exactly when the history it names is
gone (deleted and re-created session, reset, memory store restarted) and stays when it is
not (SQLite restarted); a stale or too large `after` replays nothing wrong.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection

from tests.support import RunningBridge
from tests.wsclient import recv, recv_messages, recv_until, ws_connect

StartBridge = Callable[..., RunningBridge]


async def _hello(ws: ClientConnection) -> dict[str, Any]:
    hello = await recv(ws)
    assert hello["event"] == "hello", hello
    return hello


async def _nothing_replayed(ws: ClientConnection) -> None:
    """Nothing but presence comes before the answer to a ping sent now (one socket keeps
    the order of its frames, so a replay would have come first)."""
    await ws.send('{"event": "ping"}')
    events = await recv_until(ws, lambda e: e["event"] == "pong")
    assert [e for e in events if e["event"] not in ("pong", "presence")] == []


async def _post(http: httpx.AsyncClient, sid: str, content: str) -> dict[str, Any]:
    resp = await http.post(
        f"/api/v1/sessions/{sid}/messages", json={"role": "user", "content": content}
    )
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


async def _epoch(http: httpx.AsyncClient, sid: str) -> str:
    epoch: str = (await http.get(f"/api/v1/sessions/{sid}")).json()["epoch"]
    return epoch


@pytest.mark.parametrize("end_of_life", ["delete", "reset"])
async def test_a_stale_after_of_a_recreated_session_is_told_apart_by_its_epoch(
    bridge: RunningBridge, end_of_life: str
) -> None:
    sid = "ep"
    async with httpx.AsyncClient(base_url=bridge.url, timeout=10) as http:
        for i in range(4):
            await _post(http, sid, f"old-{i}")
        async with ws_connect(bridge.ws_url, sid) as ws, ws_connect(bridge.ws_url, sid) as kept:
            first = await _hello(ws)
            await _hello(kept)
            assert first["last_seq"] == 5 and first["epoch"] == await _epoch(http, sid)
            seen = [m["seq"] for m in await recv_messages(ws, 5)]
            assert seen == [1, 2, 3, 4, 5]
            assert len(await recv_messages(kept, 5)) == 5

            if end_of_life == "delete":
                assert (await http.delete(f"/api/v1/sessions/{sid}")).status_code == 200
            else:
                assert (await http.post("/api/v1/reset/messages")).status_code == 200
            new = [await _post(http, sid, "new-1"), await _post(http, sid, "new-2")]
            assert [m["seq"] for m in new] == [2, 3]  # seq 1 is the new life's welcome

            # A socket open across the end of the history: `reset`, then the new life.
            got = await recv_until(kept, lambda e: e["event"] == "reset")
            assert [e["event"] for e in got if e["event"] != "presence"] == ["reset"]
            reborn = await recv_messages(kept, 3)
            assert [(m["seq"], m["content"]) for m in reborn][1:] == [(2, "new-1"), (3, "new-2")]

        # The tab that was closed comes back with the `after` of the old life.
        async with ws_connect(bridge.ws_url, sid, after=seen[-1]) as stale:
            hello = await _hello(stale)
            assert hello["epoch"] != first["epoch"]  # the client must throw its copy away
            assert hello["epoch"] == await _epoch(http, sid)
            assert hello["last_seq"] == 3
            await _nothing_replayed(stale)  # old seq 5 covers new 1..3: nothing is sent
        # Doing what protocol.md says: resubscribe without `after`, get the new life whole.
        async with ws_connect(bridge.ws_url, sid) as fresh:
            assert (await _hello(fresh))["epoch"] == hello["epoch"]
            replay = await recv_messages(fresh, 3)
            history = (await http.get(f"/api/v1/sessions/{sid}/messages")).json()
            assert replay == history
            assert [m["content"] for m in replay][1:] == ["new-1", "new-2"]
            await _nothing_replayed(fresh)


async def test_after_at_or_beyond_last_seq_replays_nothing_then_goes_live(
    bridge: RunningBridge,
) -> None:
    sid = "beyond"
    async with httpx.AsyncClient(base_url=bridge.url, timeout=10) as http:
        for i in range(2):
            await _post(http, sid, f"m{i}")
        epoch = await _epoch(http, sid)
        async with ws_connect(bridge.ws_url, sid, after=3) as at, ws_connect(
            bridge.ws_url, sid, after=50
        ) as beyond:
            for ws in (at, beyond):
                hello = await _hello(ws)
                # Same history: same epoch, and `last_seq` shows the client how far it is.
                assert (hello["epoch"], hello["last_seq"]) == (epoch, 3)
                await _nothing_replayed(ws)
            live = await _post(http, sid, "live")
            for ws in (at, beyond):
                assert await recv_messages(ws, 1) == [live]  # seq 4: new, so it is sent
                await _nothing_replayed(ws)


@pytest.mark.parametrize(
    ("store", "history_survives"), [("memory://", False), ("sqlite", True)]
)
async def test_the_epoch_changes_with_a_restart_only_if_the_history_is_gone(
    start_bridge: StartBridge, store: str, history_survives: bool
) -> None:
    bridge = start_bridge(store=store)
    sid = "restart"
    async with httpx.AsyncClient(base_url=bridge.url, timeout=10) as http:
        await _post(http, sid, "before")
        async with ws_connect(bridge.ws_url, sid) as ws:
            before = await _hello(ws)
            assert before["last_seq"] == 2
        bridge.restart()
        await _post(http, sid, "after restart")
        async with ws_connect(bridge.ws_url, sid, after=2) as ws:
            hello = await _hello(ws)
            if history_survives:
                # The same history: `after` is still valid and resumes exactly.
                assert hello["epoch"] == before["epoch"]
                assert [m["content"] for m in await recv_messages(ws, 1)] == ["after restart"]
                assert hello["last_seq"] == 3
            else:
                # A new history (welcome, then "after restart") under the old seq numbers.
                assert hello["epoch"] != before["epoch"]
                assert hello["last_seq"] == 2
                # Its seqs 1..2 are not the client's 1..2: only the epoch tells.
            await _nothing_replayed(ws)
