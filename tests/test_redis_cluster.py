"""Several real bridge processes sharing one Redis: fan-out, failover, Listen, template.

Every instance runs `serve --store redis://127.0.0.1:6379/15?prefix=<unique>`; clients
talk to whichever instance a test picks, as a load balancer without sticky sessions would.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Callable, Iterator
from contextlib import AsyncExitStack
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from tests.redis_support import Watched, new_prefix, store_url, wipe_sync
from tests.support import RunningBridge, wait_until
from tests.wsclient import recv, recv_messages, recv_until, ws_connect

pytestmark = pytest.mark.redis

Cluster = Callable[[int], list[RunningBridge]]


@pytest.fixture
def cluster(start_bridge: Callable[..., RunningBridge]) -> Iterator[Cluster]:
    """`cluster(n)` starts n bridges on one fresh prefix; they are stopped, then the
    prefix's keys deleted, when the test ends."""
    prefix = new_prefix("cluster")
    started: list[RunningBridge] = []

    def start(n: int) -> list[RunningBridge]:
        bridges = [start_bridge(store=store_url(prefix)) for _ in range(n)]
        started.extend(bridges)
        return bridges

    yield start
    for bridge in started:
        bridge.stop()
    wipe_sync(prefix)


async def _hello(ws: ClientConnection) -> dict[str, Any]:
    hello = await recv(ws)
    assert hello["event"] == "hello", hello
    return hello


async def _nothing_more(ws: ClientConnection) -> None:
    """Each message once: after a ping, nothing but presence comes before the pong."""
    await ws.send('{"event": "ping"}')
    events = await recv_until(ws, lambda e: e["event"] == "pong", timeout=10)
    extra = [e for e in events if e["event"] not in ("pong", "presence")]
    assert extra == []


async def test_posts_over_three_instances_reach_every_subscriber_once_in_seq_order(
    cluster: Cluster,
) -> None:
    a, b, c = cluster(3)
    bridges = (a, b, c)
    n = 90
    async with AsyncExitStack() as stack, httpx.AsyncClient(timeout=20) as http:
        sockets = [
            await stack.enter_async_context(ws_connect(x.ws_url, "fan"))
            for x in bridges for _ in range(2)
        ]
        for ws in sockets:
            await _hello(ws)
        answers = await asyncio.gather(*(
            http.post(f"{bridges[i % 3].url}/api/v1/sessions/fan/messages",
                      json={"role": "ai", "content": f"m{i}"})
            for i in range(n)
        ))
        assert [r.status_code for r in answers] == [200] * n
        assert sorted(r.json()["seq"] for r in answers) == list(range(2, n + 2))
        orders = []
        for ws in sockets:
            got = await recv_messages(ws, n + 1, timeout=20)
            assert [m["seq"] for m in got] == list(range(1, n + 2))
            orders.append([m["content"] for m in got])
        assert all(order == orders[0] for order in orders)  # one order on every instance
        for ws in sockets:
            await _nothing_more(ws)
        history = (await http.get(f"{c.url}/api/v1/sessions/fan/messages")).json()
        assert [m["content"] for m in history] == orders[0]
        info = (await http.get(f"{b.url}/api/v1/sessions/fan")).json()
        assert info["subscribers"] == 6 and info["last_seq"] == n + 1
    # In order because the session lock made publish order seq order, not because a
    # subscriber's instance had to repair a gap from storage (that is for crashes).
    for bridge in bridges:
        log = bridge.log_path.read_text()
        assert "pub/sub skipped" not in log and "expired while held" not in log, log[-2000:]


async def _collect(ws: ClientConnection, seqs: Watched[int]) -> None:
    """Add the seq of every stored message to `seqs` until the socket closes."""
    with contextlib.suppress(ConnectionClosed):
        while True:
            event = await recv(ws, timeout=60)
            if event["event"] in ("message", "stream.end"):
                seqs.add(event["seq"])


async def test_kill_9_one_instance_its_subscribers_resume_elsewhere_and_nothing_is_lost(
    cluster: Cluster,
) -> None:
    a, b, c = cluster(3)
    alive = [a, b, c]
    answered: Watched[dict[str, Any]] = Watched()
    stop = asyncio.Event()

    async def publisher(http: httpx.AsyncClient, k: int) -> None:
        i = 0
        while not stop.is_set():
            target = alive[(i + k) % len(alive)]
            i += 1
            try:
                resp = await http.post(f"{target.url}/api/v1/sessions/failover/messages",
                                       json={"role": "user", "content": f"p{k}-{i}"})
            except httpx.TransportError:
                if target in alive:  # what a load balancer does with a dead upstream
                    alive.remove(target)
                continue
            if resp.status_code == 200:
                answered.add(resp.json())

    async with httpx.AsyncClient(timeout=20) as http, \
            ws_connect(a.ws_url, "failover") as on_a, ws_connect(b.ws_url, "failover") as on_b:
        await _hello(on_a)
        await _hello(on_b)
        seen_a: Watched[int] = Watched()
        seen_b: Watched[int] = Watched()
        readers = [asyncio.create_task(_collect(on_a, seen_a)),
                   asyncio.create_task(_collect(on_b, seen_b))]
        publishers = [asyncio.create_task(publisher(http, k)) for k in range(4)]
        await answered.until(lambda got: len(got) >= 40, 30, "40 answered POSTs")
        await asyncio.to_thread(a.kill)  # SIGKILL mid-load: no shutdown code runs
        count_at_kill = len(answered)
        await answered.until(lambda got: len(got) >= count_at_kill + 40, 30,
                             "40 more answered POSTs after the kill")
        stop.set()
        await asyncio.gather(*publishers)
        await asyncio.wait_for(readers[0], 30)  # a's socket is closed by the kill
        assert seen_a, "the subscriber on a got nothing before the kill"

        info = (await http.get(f"{c.url}/api/v1/sessions/failover")).json()
        last = info["last_seq"]
        # The tab that was on a resumes on c with `after` and misses nothing.
        async with ws_connect(c.ws_url, "failover", after=seen_a[-1]) as resumed:
            await _hello(resumed)
            rest = await recv_messages(resumed, last - seen_a[-1], timeout=20)
            await _nothing_more(resumed)
        assert seen_a + [m["seq"] for m in rest] == list(range(1, last + 1))
        # The tab on b stayed connected throughout: every seq once, in order, no gap
        # (even one that a stored and died before publishing).
        await seen_b.until(lambda got: bool(got) and got[-1] >= last, 20, f"seq {last} on b")
        assert seen_b == list(range(1, last + 1))
        readers[1].cancel()

        history = (await http.get(f"{b.url}/api/v1/sessions/failover/messages")).json()
    assert [m["seq"] for m in history] == list(range(1, last + 1))
    stored_ids = {m["id"] for m in history}
    assert all(m["id"] in stored_ids for m in answered)  # every 200 survived the kill


def _listen_waiting(bridge: RunningBridge) -> float:
    text = httpx.get(f"{bridge.url}/metrics").text
    found = re.search(r"^bridge_listen_waiting (\S+)$", text, re.M)
    return float(found[1]) if found else 0.0


async def test_listen_on_other_instances_gets_each_message_exactly_once(cluster: Cluster) -> None:
    a, b, c = cluster(3)
    limits = httpx.Limits(max_connections=20)
    async with httpx.AsyncClient(timeout=30, limits=limits) as http:
        calls = [
            asyncio.create_task(http.get(f"{x.url}/api/v1/listen/message", params={"timeout": 4}))
            for x in (b, c, b, c)
        ]
        # All four parked in b and c, so they truly race (another process: poll it).
        await asyncio.to_thread(
            wait_until, lambda: _listen_waiting(b) == 2 and _listen_waiting(c) == 2, 10,
            "two Listen calls waiting on b and two on c",
        )
        for i in range(3):
            resp = await http.post(f"{a.url}/api/v1/sessions/l{i}/messages",
                                   json={"role": "user", "content": f"q{i}"})
            assert resp.status_code == 200
        answers = await asyncio.gather(*calls)
        got = sorted(r.json()["content"] for r in answers if r.status_code == 200)
        assert got == ["q0", "q1", "q2"]  # each to exactly one call
        assert sorted(r.status_code for r in answers) == [200, 200, 200, 204]
        late = await http.get(f"{a.url}/api/v1/listen/message", params={"timeout": 0})
        assert late.status_code == 204  # nothing left over for anyone


async def test_template_set_on_one_instance_reaches_subscribers_on_another(
    cluster: Cluster,
) -> None:
    a, b = cluster(2)
    template = {"welcome_msg": "Hello from a", "input_msg": "Ask away"}
    async with httpx.AsyncClient(timeout=20) as http, ws_connect(b.ws_url, "tpl") as ws:
        await _hello(ws)
        resp = await http.post(f"{a.url}/api/v1/chats", json=template)
        assert resp.status_code == 200
        events = await recv_until(ws, lambda e: e["event"] == "template", timeout=10)
        assert events[-1]["template"]["welcome_msg"] == "Hello from a"
        # b applies it too: its template, and the welcome of a session it creates.
        assert (await http.get(f"{b.url}/api/v1/chats")).json()["input_msg"] == "Ask away"
        created = (await http.post(f"{b.url}/api/v1/sessions/made-on-b")).json()
        assert created[0]["content"] == "Hello from a"


async def test_reset_on_one_instance_reaches_sockets_on_every_instance(cluster: Cluster) -> None:
    a, b = cluster(2)
    async with httpx.AsyncClient(timeout=20) as http, AsyncExitStack() as stack:
        for sid in ("rx", "ry"):
            resp = await http.post(f"{a.url}/api/v1/sessions/{sid}/messages",
                                   json={"role": "user", "content": f"{sid} before"})
            assert resp.json()["seq"] == 2
        # Sockets of both sessions on the other instance, and one on the resetting one.
        on_b_x = await stack.enter_async_context(ws_connect(b.ws_url, "rx"))
        on_b_y = await stack.enter_async_context(ws_connect(b.ws_url, "ry"))
        on_a_x = await stack.enter_async_context(ws_connect(a.ws_url, "rx"))
        sockets = (on_b_x, on_b_y, on_a_x)
        for ws in sockets:
            await _hello(ws)
            assert [m["seq"] for m in await recv_messages(ws, 2)] == [1, 2]

        assert (await http.post(f"{a.url}/api/v1/reset/messages")).json() == {"reset": True}
        for ws in sockets:
            got = await recv_until(ws, lambda e: e["event"] != "presence", timeout=10)
            assert got[-1] == {"event": "reset"}, got
        assert (await http.get(f"{b.url}/api/v1/sessions")).json() == []

        # The sockets stay open; the session's next life starts at seq 1 on every instance.
        resp = await http.post(f"{a.url}/api/v1/sessions/rx/messages",
                               json={"role": "user", "content": "rx after"})
        assert resp.json()["seq"] == 2
        for ws in (on_b_x, on_a_x):
            fresh = await recv_messages(ws, 2)
            assert [(m["seq"], m["role"]) for m in fresh] == [(1, "ai"), (2, "user")]
            assert fresh[1]["content"] == "rx after"
            await _nothing_more(ws)
        await _nothing_more(on_b_y)  # nothing of rx reached the socket of ry
    for bridge in (a, b):
        log = bridge.log_path.read_text()
        assert "pub/sub skipped" not in log, log[-2000:]
