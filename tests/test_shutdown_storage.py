"""Graceful shutdown (SIGTERM -> 1001) and storage failures (503, no partial state, recovery)."""

from __future__ import annotations

import asyncio
import signal
import sqlite3

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from tests.support import RunningBridge
from tests.wsclient import recv, ws_connect


async def test_sigterm_closes_sockets_with_1001(bridge: RunningBridge) -> None:
    async with ws_connect(bridge.ws_url, "bye") as ws:
        await recv(ws)
        bridge.proc.terminate()  # type: ignore[union-attr]
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                await recv(ws, timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
    # uvicorn re-raises the signal once it has shut down cleanly: "killed by SIGTERM".
    assert bridge.proc.wait(timeout=10) == -signal.SIGTERM  # type: ignore[union-attr]
    assert "Application shutdown complete" in bridge.log_path.read_text()


async def test_locked_database_answers_503_then_recovers(start_bridge, tmp_path) -> None:  # type: ignore[no-untyped-def]
    bridge: RunningBridge = start_bridge(
        store="sqlite", env={"BRIDGE_SQLITE_BUSY_TIMEOUT_MS": "200"}
    )
    body = {"role": "user", "content": "x"}
    async with httpx.AsyncClient(base_url=bridge.url, timeout=10) as http:
        assert (await http.post("/api/v1/sessions/lk/messages", json=body)).status_code == 200
        # Another process takes the write lock of the database file and keeps it.
        other = sqlite3.connect(tmp_path / "bridge.db", isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")
        try:
            refused = await http.post("/api/v1/sessions/lk/messages", json=body)
            assert refused.status_code == 503
            assert "locked" in refused.json()["detail"]
            assert (await http.get("/readyz")).status_code in (200, 503)
        finally:
            other.execute("ROLLBACK")
            other.close()
        again = await http.post("/api/v1/sessions/lk/messages", json=body)
        assert again.status_code == 200 and again.json()["seq"] == 3  # no gap, no partial write
        seqs = [m["seq"] for m in (await http.get("/api/v1/sessions/lk/messages")).json()]
        assert seqs == [1, 2, 3]


async def test_sigterm_answers_waiting_listen_calls(bridge: RunningBridge) -> None:
    async with httpx.AsyncClient(base_url=bridge.url, timeout=30) as http:
        waiting = asyncio.create_task(http.get("/api/v1/listen/message", params={"timeout": 60}))
        async with asyncio.timeout(10):
            while "bridge_listen_waiting 1.0" not in (await http.get("/metrics")).text:
                await asyncio.sleep(0.02)  # poll interval
        bridge.proc.terminate()  # type: ignore[union-attr]
        # Answered at once (not after its 60 s), and the bridge stops without waiting for it.
        resp = await asyncio.wait_for(waiting, 8)
    assert resp.status_code == 204
    assert bridge.proc.wait(timeout=10) == -signal.SIGTERM  # type: ignore[union-attr]
