"""The WebSocket route against a real server (served in this process: none of these
needs a process of its own): hello, replay, live, order, resume, presence."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.conftest import StartApp
from tests.inprocess import InProcessBridge
from tests.redis_support import new_prefix, store_url, wipe_sync
from tests.support import wait_until
from tests.test_socket_bounds import raw_socket, subscribers
from tests.wsclient import recv, recv_messages, recv_until, ws_connect


@pytest.fixture
def bridge(app_bridge: InProcessBridge) -> InProcessBridge:
    """The bridge of every test here: served in this process."""
    return app_bridge


async def _post(http: httpx.AsyncClient, session: str, content: str, role: str = "user") -> dict:
    resp = await http.post(
        f"/api/v1/sessions/{session}/messages", json={"role": role, "content": content}
    )
    assert resp.status_code == 200, resp.text
    return resp.json()


async def test_hello_then_history_then_live(bridge: InProcessBridge) -> None:
    async with httpx.AsyncClient(base_url=bridge.url) as http:
        await _post(http, "s", "before")
        async with ws_connect(bridge.ws_url, "s") as ws:
            hello = await recv(ws)
            assert hello["event"] == "hello" and hello["session_id"] == "s"
            assert hello["last_seq"] == 2 and hello["epoch"] and hello["subscribers"] == 1
            assert hello["template"]["welcome_msg"]
            replay = await recv_messages(ws, 2)
            assert [(m["seq"], m["content"]) for m in replay][1] == (2, "before")
            await _post(http, "s", "live")
            (live,) = await recv_messages(ws, 1)
            assert live["seq"] == 3 and live["content"] == "live"


async def test_subscribing_creates_the_session_with_its_welcome(bridge: InProcessBridge) -> None:
    async with ws_connect(bridge.ws_url, "fresh") as ws:
        hello = await recv(ws)
        assert hello["last_seq"] == 1
        (welcome,) = await recv_messages(ws, 1)
        assert welcome["role"] == "ai" and welcome["seq"] == 1


async def test_resume_with_after_gets_exactly_what_was_missed(bridge: InProcessBridge) -> None:
    async with httpx.AsyncClient(base_url=bridge.url) as http:
        async with ws_connect(bridge.ws_url, "r") as ws:
            await recv(ws)
            await _post(http, "r", "one")
            seen = await recv_messages(ws, 2)
        last = seen[-1]["seq"]
        for i in range(5):
            await _post(http, "r", f"missed-{i}")
        async with ws_connect(bridge.ws_url, "r", after=last) as ws:
            hello = await recv(ws)
            assert hello["last_seq"] == last + 5
            missed = await recv_messages(ws, 5)
            assert [m["content"] for m in missed] == [f"missed-{i}" for i in range(5)]
            await _post(http, "r", "live")
            (live,) = await recv_messages(ws, 1)
            assert live["seq"] == last + 6
            await ws.send(json.dumps({"event": "ping"}))
            # Nothing twice: the next frame after the live message is the pong.
            assert (await recv(ws))["event"] == "pong"


async def test_concurrent_posts_contiguous_and_same_order_everywhere(
    bridge: InProcessBridge,
) -> None:
    n = 200
    async with httpx.AsyncClient(
        base_url=bridge.url, limits=httpx.Limits(max_connections=50)
    ) as http:
        await http.post("/api/v1/sessions/busy")
        sockets = [ws_connect(bridge.ws_url, "busy", after=1) for _ in range(3)]
        conns = [await s.__aenter__() for s in sockets]
        try:
            for ws in conns:
                await recv(ws)  # hello
            answers = await asyncio.gather(*(_post(http, "busy", f"c{i}") for i in range(n)))
            assert sorted(a["seq"] for a in answers) == list(range(2, n + 2))
            seen = [await recv_messages(ws, n) for ws in conns]
        finally:
            for s in sockets:
                await s.__aexit__(None, None, None)
    orders = [[m["seq"] for m in got] for got in seen]
    assert orders[0] == list(range(2, n + 2))
    assert orders[0] == orders[1] == orders[2]
    by_seq = {a["seq"]: a["content"] for a in answers}
    assert [m["content"] for m in seen[1]] == [by_seq[s] for s in orders[1]]


async def test_subscriber_may_publish_and_gets_its_own_message(bridge: InProcessBridge) -> None:
    async with (
        ws_connect(bridge.ws_url, "p", after=1) as a,
        ws_connect(bridge.ws_url, "p", after=1) as b,
    ):
        await recv(a)
        await recv(b)
        await a.send(
            json.dumps({"event": "message", "role": "user", "content": "from a", "id": "m-1"})
        )
        await a.send(
            json.dumps({"event": "message", "role": "user", "content": "from a", "id": "m-1"})
        )
        await a.send(json.dumps({"event": "ping"}))
        got_a = await recv_until(a, lambda e: e["event"] == "pong")
        got_b = await recv_messages(b, 1)
        msgs_a = [e["message"] for e in got_a if e["event"] == "message"]
        assert [m["content"] for m in msgs_a] == ["from a"]  # the repeated id was a duplicate
        assert got_b[0]["id"] == "m-1" and got_b[0]["seq"] == 2


async def test_bad_frames_get_error_events_and_socket_stays(bridge: InProcessBridge) -> None:
    async with ws_connect(bridge.ws_url, "bad", after=1) as ws:
        await recv(ws)
        cases = [
            ("not json", "not JSON"),
            ("[1, 2]", "JSON object"),
            (json.dumps({"event": "dance"}), "unknown event"),
            (json.dumps({"event": "message", "role": "robot", "content": "x"}), "role"),
            (json.dumps({"event": "message", "role": "ai", "content": 5}), "content"),
        ]
        for frame, expected in cases:
            await ws.send(frame)
            event = await recv_until(ws, lambda e: e["event"] == "error")
            assert expected in event[-1]["detail"], (frame, event)
        await ws.send(json.dumps({"event": "ping"}))
        assert (await recv(ws))["event"] == "pong"
    async with httpx.AsyncClient(base_url=bridge.url) as http:
        assert len((await http.get("/api/v1/sessions/bad/messages")).json()) == 1


async def test_presence_counts_and_events(bridge: InProcessBridge) -> None:
    async with (
        httpx.AsyncClient(base_url=bridge.url) as http,
        ws_connect(bridge.ws_url, "pr", after=1) as a,
    ):
        await recv(a)
        async with ws_connect(bridge.ws_url, "pr", after=1) as b:
            assert (await recv(b))["subscribers"] == 2
            joined = await recv_until(
                a, lambda e: e["event"] == "presence" and e["subscribers"] == 2
            )
            assert joined
            info = (await http.get("/api/v1/sessions/pr")).json()
            assert info["subscribers"] == 2
        left = await recv_until(a, lambda e: e["event"] == "presence" and e["subscribers"] == 1)
        assert left[-1]["subscribers"] == 1


async def test_template_change_pushed_to_every_session(bridge: InProcessBridge) -> None:
    async with ws_connect(bridge.ws_url, "t1") as a, ws_connect(bridge.ws_url, "t2") as b:
        await recv(a)
        await recv(b)
        async with httpx.AsyncClient(base_url=bridge.url) as http:
            resp = await http.post(
                "/api/v1/chats",
                json={
                    "welcome_msg": "New!",
                    "input_msg": "?",
                    "write_speed": 0.1,
                    "ai_avatar": "🦜",
                },
            )
            assert resp.status_code == 200
        for ws in (a, b):
            events = await recv_until(ws, lambda e: e["event"] == "template")
            assert events[-1]["template"]["ai_avatar"] == "🦜"


async def test_delete_session_resets_subscribers(bridge: InProcessBridge) -> None:
    async with httpx.AsyncClient(base_url=bridge.url) as http:
        async with ws_connect(bridge.ws_url, "del") as ws:
            await recv(ws)
            await recv_messages(ws, 1)
            assert (await http.delete("/api/v1/sessions/del")).status_code == 200
            await recv_until(ws, lambda e: e["event"] == "reset")
            # The next message starts a new history at seq 1 and still reaches this socket.
            await _post(http, "del", "again")
            fresh = await recv_messages(ws, 2)
            assert [m["seq"] for m in fresh] == [1, 2]
        assert (await http.delete("/api/v1/sessions/del-nope")).status_code == 404


@pytest.mark.parametrize("after", ["-1", "x"])
async def test_bad_after_closes_with_invalid_data_code(bridge: InProcessBridge, after: str) -> None:
    async with connect(f"{bridge.ws_url}/api/v1/sessions/a/ws?after={after}") as ws:
        with pytest.raises(ConnectionClosed) as closed:
            await recv(ws)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1007 and "after" in closed.value.rcvd.reason


async def test_bad_session_id_is_refused_with_reason(bridge: InProcessBridge) -> None:
    async with connect(f"{bridge.ws_url}/api/v1/sessions/{'x' * 200}/ws") as ws:
        with pytest.raises(ConnectionClosed) as closed:
            await recv(ws)
    assert closed.value.rcvd is not None and "invalid session id" in closed.value.rcvd.reason


async def _fill(bridge: InProcessBridge, session: str) -> None:
    """Post 6.4 MiB to `session` (100 x 64 KiB): far more than kernel buffers hold."""
    chunk = "z" * (64 * 1024)
    async with httpx.AsyncClient(base_url=bridge.url, timeout=30) as http:
        for i in range(100):
            await _post(http, session, f"{i}:{chunk}", role="ai")


@pytest.mark.parametrize("backend", ["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def test_a_live_write_that_stalls_is_bounded_and_the_rest_goes_on(
    start_app: StartApp, backend: str
) -> None:
    """A subscriber stops reading while live messages are written to it (not its replay),
    without overflowing its buffer, heartbeats off: after `send_timeout_s` its connection
    is aborted and released, and every other session is still served.

    Before: the write's timeout belonged to whichever task had begun the write (the
    publisher: a finished request, or the Redis broker's reader). It never ended the
    write (the socket stayed subscribed for good), and with Redis it cancelled the reader:
    the instance delivered nothing more to anyone."""
    prefix = new_prefix()
    store = "memory://" if backend == "memory" else store_url(prefix)
    bridge = start_app(
        store=store,
        env={
            "BRIDGE_SEND_TIMEOUT_S": "1",
            "BRIDGE_PING_INTERVAL_S": "0",
            "BRIDGE_SUBSCRIBER_BUFFER_BYTES": str(64 * 1024 * 1024),
        },
    )
    try:
        sock, _ = raw_socket(bridge.port, "/api/v1/sessions/stall/ws", rcvbuf=4096)
        with sock:
            wait_until(lambda: subscribers(bridge, "stall") == 1, 5, "the socket to subscribe")
            await _fill(bridge, "stall")
            wait_until(
                lambda: subscribers(bridge, "stall") == 0,
                15,
                "the stalled live write to end its socket",
            )
        async with (
            httpx.AsyncClient(base_url=bridge.url) as http,
            ws_connect(bridge.ws_url, "other", after=1) as ws,
        ):
            await recv(ws)  # hello
            await _post(http, "other", "still served?")
            (got,) = await recv_messages(ws, 1)
            assert got["content"] == "still served?"
    finally:
        if backend == "redis":
            wipe_sync(prefix)
