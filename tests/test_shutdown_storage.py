"""Graceful shutdown (SIGTERM -> 1001, waiting Listen calls answered) and storage failures
(503, no partial state, recovery; /readyz while the store is away and once it is back)."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from tests.redis_support import RedisServer, new_prefix, store_url, wipe_sync
from tests.support import RunningBridge, free_port
from tests.wsclient import recv, ws_connect

StartBridge = Callable[..., RunningBridge]


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


async def test_locked_database_answers_503_then_recovers(
    start_bridge: StartBridge, tmp_path: Path
) -> None:
    bridge = start_bridge(store="sqlite", env={"BRIDGE_SQLITE_BUSY_TIMEOUT_MS": "200"})
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
            # Still ready: the store answers (reads go on in WAL mode); a held write lock
            # is a passing condition each write answers with its own 503.
            ready = await http.get("/readyz")
            assert ready.status_code == 200, ready.text
            history = await http.get("/api/v1/sessions/lk/messages")
            assert [m["seq"] for m in history.json()] == [1, 2]
        finally:
            other.execute("ROLLBACK")
            other.close()
        again = await http.post("/api/v1/sessions/lk/messages", json=body)
        assert again.status_code == 200 and again.json()["seq"] == 3  # no gap, no partial write
        seqs = [m["seq"] for m in (await http.get("/api/v1/sessions/lk/messages")).json()]
        assert seqs == [1, 2, 3]


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, on a free port (stopped and started by it)."""
    server = RedisServer(free_port(), tmp_path / "redis.log").start()
    yield server
    server.stop()


async def _status_becomes(http: httpx.AsyncClient, path: str, status: int, within: float) -> None:
    """Poll `path` until it answers `status`; fail after `within` seconds."""
    answers: list[int] = []
    try:
        async with asyncio.timeout(within):
            while not answers or answers[-1] != status:
                answers.append((await http.get(path)).status_code)
                if answers[-1] != status:
                    await asyncio.sleep(0.05)  # poll interval
    except TimeoutError:
        raise AssertionError(f"{path} never answered {status}: {answers[-5:]}") from None


@pytest.mark.redis
async def test_readyz_is_503_while_redis_is_down_and_200_once_it_is_back(
    start_bridge: StartBridge, private_redis: RedisServer
) -> None:
    bridge = start_bridge(store=f"{private_redis.url}?prefix={new_prefix('ready')}")
    body = {"role": "user", "content": "x"}
    async with httpx.AsyncClient(base_url=bridge.url, timeout=10) as http:
        ready = await http.get("/readyz")
        assert ready.status_code == 200 and ready.json()["status"] == "ready", ready.text
        await asyncio.to_thread(private_redis.stop)
        await _status_becomes(http, "/readyz", 503, within=15)
        down = await http.get("/readyz")
        assert down.status_code == 503 and "storage unavailable" in down.json()["detail"]
        refused = await http.post("/api/v1/sessions/gone/messages", json=body)
        assert refused.status_code == 503, refused.text
        assert (await http.get("/healthz")).status_code == 200  # alive, just not ready

        await asyncio.to_thread(private_redis.start)  # empty: nothing was persisted
        await _status_becomes(http, "/readyz", 200, within=15)
        stored = await http.post("/api/v1/sessions/back/messages", json=body)
        assert stored.status_code == 200 and stored.json()["seq"] == 2, stored.text


async def _wait_for_metric(http: httpx.AsyncClient, line: str, within: float) -> None:
    async with asyncio.timeout(within):
        while line not in (await http.get("/metrics")).text:
            await asyncio.sleep(0.02)  # poll interval


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def shutdown_store(request: pytest.FixtureRequest) -> Iterator[str]:
    """The store of a bridge whose Listen waiters meet a SIGTERM."""
    if request.param == "memory":
        yield "memory://"
        return
    prefix = new_prefix("shutdown")
    yield store_url(prefix)
    wipe_sync(prefix)


@pytest.mark.parametrize("route", ["/api/v1/listen/message", "/api/v1/sessions/sd/listen"])
async def test_sigterm_answers_waiting_listen_calls(
    start_bridge: StartBridge, shutdown_store: str, route: str
) -> None:
    bridge = start_bridge(store=shutdown_store)
    async with httpx.AsyncClient(base_url=bridge.url, timeout=60) as http:
        assert (await http.post("/api/v1/sessions/sd")).status_code == 200
        # A Listen that would wait 10 minutes: longer than uvicorn's 10 s graceful shutdown,
        # which without the bridge's own answer would cut the call off with no response.
        waiting = asyncio.create_task(http.get(route, params={"timeout": 600}))
        await _wait_for_metric(http, "bridge_listen_waiting 1.0", within=10)
        bridge.proc.terminate()  # type: ignore[union-attr]
        resp = await asyncio.wait_for(waiting, 30)
    assert resp.status_code == 204
    assert bridge.proc.wait(timeout=10) == -signal.SIGTERM  # type: ignore[union-attr]
