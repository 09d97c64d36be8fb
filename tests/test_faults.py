"""Slow consumers, dead connections and kill -9, against real bridge processes."""

from __future__ import annotations

import asyncio
import base64
import os
import socket

import httpx
import psutil
import pytest
from websockets.exceptions import ConnectionClosed

from tests.support import RunningBridge, wait_until
from tests.wsclient import recv, recv_messages, ws_connect


async def test_slow_subscriber_closed_with_4000_others_keep_up(start_bridge) -> None:  # type: ignore[no-untyped-def]
    # SQLite, so that the history itself is on disk and RSS shows what sockets hold.
    bridge: RunningBridge = start_bridge(
        store="sqlite",
        env={"BRIDGE_SUBSCRIBER_BUFFER": "50", "BRIDGE_SUBSCRIBER_BUFFER_BYTES": "1000000"},
    )
    chunk = "x" * 100_000
    posts = 100  # 10 MB to a subscriber that never reads
    proc = psutil.Process(bridge.proc.pid)  # type: ignore[union-attr]
    async with httpx.AsyncClient(base_url=bridge.url, timeout=30) as http:
        await http.post("/api/v1/sessions/slow")
        # max_queue=1: the client stops reading from TCP once one frame is waiting.
        # A small kernel receive buffer, so that what the bridge holds shows; no client
        # pings, which would time out behind the backlog and close the socket first.
        stuck_sock = socket.create_connection(("127.0.0.1", bridge.port))
        stuck_sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        async with (
            ws_connect(
                bridge.ws_url,
                "slow",
                after=1,
                max_queue=1,
                max_size=None,
                sock=stuck_sock,
                ping_interval=None,
            ) as stuck,
            ws_connect(bridge.ws_url, "slow", after=1, max_size=None) as fast,
        ):
            await recv(stuck)
            await recv(fast)
            rss_before = proc.memory_info().rss
            reader = asyncio.create_task(recv_messages(fast, posts, timeout=60))
            for i in range(posts):
                resp = await http.post(
                    "/api/v1/sessions/slow/messages", json={"role": "ai", "content": f"{i}:{chunk}"}
                )
                assert resp.status_code == 200
            got = await reader
            assert [m["seq"] for m in got] == list(range(2, posts + 2))
            rss_after = proc.memory_info().rss
            # Now read the stuck socket: it gets what fitted, then the close frame 4000.
            with pytest.raises(ConnectionClosed) as closed:
                async with asyncio.timeout(30):
                    while True:
                        await stuck.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4000
    # Bounded: the bridge did not keep the 10 MB for the stuck socket (buffer cap 1 MB).
    assert rss_after - rss_before < 8_000_000, rss_after - rss_before
    async with httpx.AsyncClient(base_url=bridge.url) as http:
        assert "bridge_slow_consumer_closes_total 1.0" in (await http.get("/metrics")).text


def _raw_upgrade(port: int, path: str) -> socket.socket:
    """A WebSocket handshake by hand, then silence: this peer never answers a ping."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    assert sock.recv(4096).startswith(b"HTTP/1.1 101")
    return sock


async def test_dead_connection_is_dropped_by_heartbeat(start_bridge) -> None:  # type: ignore[no-untyped-def]
    bridge: RunningBridge = start_bridge(
        env={"BRIDGE_PING_INTERVAL_S": "0.3", "BRIDGE_PING_TIMEOUT_S": "0.3"}
    )
    sock = _raw_upgrade(bridge.port, "/api/v1/sessions/hb/ws")
    try:

        def subscribers() -> int:
            return int(httpx.get(f"{bridge.url}/api/v1/sessions/hb").json()["subscribers"])

        wait_until(lambda: subscribers() == 1, 5, "the raw socket to be subscribed")
        wait_until(lambda: subscribers() == 0, 10, "the heartbeat to drop the silent socket")
    finally:
        sock.close()


async def test_kill_9_loses_no_answered_message(start_bridge) -> None:  # type: ignore[no-untyped-def]
    bridge: RunningBridge = start_bridge(store="sqlite")
    answered: list[dict] = []
    async with httpx.AsyncClient(
        base_url=bridge.url, timeout=10, limits=httpx.Limits(max_connections=20)
    ) as http:
        first = (
            await http.post("/api/v1/sessions/k9/messages", json={"role": "user", "content": "x"})
        ).json()
        async with ws_connect(bridge.ws_url, "k9") as ws:
            hello = await recv(ws)
        epoch = hello["epoch"]

        async def publisher(n: int) -> None:
            for i in range(1000):
                try:
                    resp = await http.post(
                        "/api/v1/sessions/k9/messages",
                        json={"role": "user", "content": f"p{n}-{i}"},
                    )
                except httpx.HTTPError:
                    return  # the bridge died under us: this one was never answered
                if resp.status_code == 200:
                    answered.append(resp.json())

        tasks = [asyncio.create_task(publisher(n)) for n in range(8)]
        async with asyncio.timeout(30):
            while len(answered) < 300:
                await asyncio.sleep(0.005)  # poll interval while load runs
        bridge.kill()
        await asyncio.gather(*tasks)
    assert len(answered) >= 300
    bridge.start()
    async with httpx.AsyncClient(base_url=bridge.url) as http:
        stored = (await http.get("/api/v1/sessions/k9/messages")).json()
    by_id = {m["id"]: m for m in stored}
    missing = [a for a in answered if a["id"] not in by_id]
    assert not missing, f"{len(missing)} answered messages lost"
    assert all(by_id[a["id"]]["seq"] == a["seq"] for a in answered)
    assert [m["seq"] for m in stored] == list(range(1, len(stored) + 1))
    assert first["seq"] == 2
    async with ws_connect(bridge.ws_url, "k9", after=len(stored)) as ws:
        again = await recv(ws)
    assert again["epoch"] == epoch and again["last_seq"] == len(stored)
