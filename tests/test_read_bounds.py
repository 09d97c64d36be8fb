"""Sessions, reads and publishing stay bounded and honest (issue 10, items 3, 4, 5, 12).

Against real bridge processes: a session quota, paged session lists, history read a page
at a time, idempotency conflicts, image content, and Listen calls whose client hung up.
"""

from __future__ import annotations

import asyncio
import re

import httpx
import psutil
import pytest
from websockets.exceptions import ConnectionClosed

from tests.support import RunningBridge
from tests.wsclient import recv, ws_connect


def _metric(text: str, name: str) -> float:
    match = re.search(rf"^{name} ([0-9.e+-]+)$", text, re.MULTILINE)
    assert match is not None, f"{name} not in /metrics"
    return float(match.group(1))


async def _wait_metric(http: httpx.AsyncClient, name: str, value: float, timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while _metric((await http.get("/metrics")).text, name) != value:
            await asyncio.sleep(0.05)  # poll interval


async def test_session_quota_refuses_new_sessions_everywhere_and_keeps_old_ones(
    start_bridge,  # type: ignore[no-untyped-def]
) -> None:
    bridge: RunningBridge = start_bridge(store="sqlite", env={"BRIDGE_SESSIONS_MAX": "3"})
    async with httpx.AsyncClient(base_url=bridge.url, timeout=10) as http:
        for name in ("a", "b", "c"):
            assert (await http.post(f"/api/v1/sessions/{name}")).status_code == 200
        refused = await http.post("/api/v1/sessions/d")
        assert refused.status_code == 429
        assert "BRIDGE_SESSIONS_MAX" in refused.json()["detail"]
        posted = await http.post(
            "/api/v1/sessions/d/messages", json={"role": "user", "content": "hi"}
        )
        assert posted.status_code == 429
        with pytest.raises(ConnectionClosed) as closed:
            async with ws_connect(bridge.ws_url, "d") as ws:
                await recv(ws)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
        # The sessions that exist go on as before; nothing of d was stored.
        ok = await http.post("/api/v1/sessions/a/messages", json={"role": "ai", "content": "x"})
        assert ok.status_code == 200 and ok.json()["seq"] == 2
        assert (await http.get("/api/v1/sessions")).json() == ["a", "b", "c"]
        assert (await http.get("/api/v1/sessions/d")).status_code == 404
        # Room again once one is deleted.
        assert (await http.delete("/api/v1/sessions/a")).status_code == 200
        assert (await http.post("/api/v1/sessions/d")).status_code == 200


async def test_session_list_is_paged_with_a_next_link(start_bridge) -> None:  # type: ignore[no-untyped-def]
    bridge: RunningBridge = start_bridge(env={"BRIDGE_LIST_LIMIT_MAX": "3"})
    names = [f"s{i}" for i in range(7)]
    async with httpx.AsyncClient(base_url=bridge.url, timeout=10) as http:
        for name in names:
            await http.post(f"/api/v1/sessions/{name}")
        first = await http.get("/api/v1/sessions")
        assert first.json() == names[:3]  # never more than BRIDGE_LIST_LIMIT_MAX at once
        seen: list[str] = []
        url: str | None = "/api/v1/sessions?limit=2"
        while url is not None:
            page = await http.get(url)
            assert page.status_code == 200
            seen += page.json()
            url = page.links.get("next", {}).get("url")
        assert seen == names
        too_many = await http.get("/api/v1/sessions?limit=4")
        assert too_many.status_code == 422
        assert "BRIDGE_LIST_LIMIT_MAX" in too_many.json()["detail"]


async def test_readers_of_a_large_history_hold_a_page_not_the_history(
    start_bridge,  # type: ignore[no-untyped-def]
) -> None:
    bridge: RunningBridge = start_bridge(store="sqlite")
    big = "z" * 250_000
    proc = psutil.Process(bridge.proc.pid)  # type: ignore[union-attr]
    async with httpx.AsyncClient(base_url=bridge.url, timeout=60) as http:
        for i in range(100):  # 25 MB of history
            resp = await http.post(
                "/api/v1/sessions/large/messages", json={"role": "ai", "content": f"{i}{big}"}
            )
            assert resp.status_code == 200
        whole = (await http.get("/api/v1/sessions/large/messages?limit=0")).json()
        assert [m["seq"] for m in whole] == list(range(1, 102))
        assert whole[-1]["content"] == f"99{big}"
        last = (await http.get("/api/v1/sessions/large/messages?limit=3")).json()
        assert [m["seq"] for m in last] == [99, 100, 101]
        rss_before = proc.memory_info().rss
        # Eight readers that read the first bytes, then stop reading.
        async with httpx.AsyncClient(base_url=bridge.url, timeout=60) as readers:
            streams = [
                readers.stream("GET", "/api/v1/sessions/large/messages?limit=0") for _ in range(8)
            ]
            responses = [await s.__aenter__() for s in streams]
            for response in responses:
                assert response.status_code == 200
                assert (await response.aiter_raw().__anext__()).startswith(b"[")
            grown = proc.memory_info().rss - rss_before
            for s in streams:
                await s.__aexit__(None, None, None)
    # The whole history once per reader would be 8 x 25 MB and more.
    assert grown < 64 * 1024 * 1024, grown


async def test_idempotency_key_reused_for_other_content_is_a_conflict(
    bridge: RunningBridge,
) -> None:
    async with httpx.AsyncClient(base_url=bridge.url, timeout=10) as http:
        url = "/api/v1/sessions/idem/messages"
        key = {"Idempotency-Key": "reply-1"}
        first = await http.post(url, json={"role": "ai", "content": "one"}, headers=key)
        again = await http.post(url, json={"role": "ai", "content": "one"}, headers=key)
        other = await http.post(url, json={"role": "ai", "content": "two"}, headers=key)
        assert first.status_code == again.status_code == 200
        assert again.json()["seq"] == first.json()["seq"]
        assert other.status_code == 409
        assert "reply-1" in other.json()["detail"]
        stored = (await http.get(url)).json()
        assert [m["content"] for m in stored][1:] == ["one"]
        welcome = await http.post(url, json={"role": "ai", "content": "fake", "id": "welcome"})
        assert welcome.status_code == 422
        assert "reserved" in welcome.json()["detail"]


@pytest.mark.parametrize(
    "content",
    ["/etc/passwd", "/dev/zero", "file:///etc/hostname", "C:\\x.png", "data:text/html,<b>",
     "data:image/svg+xml;base64,PHN2Zz4=", "javascript:alert(1)", "https://" + "a" * 3000],
)
async def test_image_messages_accept_only_web_urls_and_image_data(
    bridge: RunningBridge, content: str
) -> None:
    async with httpx.AsyncClient(base_url=bridge.url, timeout=10) as http:
        url = "/api/v1/sessions/img/messages"
        bad = await http.post(url, json={"role": "ai", "content": content, "type": "image"})
        assert bad.status_code == 422, bad.text
        assert "image" in bad.json()["detail"]
        good = await http.post(
            url, json={"role": "ai", "content": "https://example.org/cat.png", "type": "image"}
        )
        assert good.status_code == 200
        assert [m["type"] for m in (await http.get(url)).json()] == ["text", "image"]
        # The same rule over the WebSocket.
        async with ws_connect(bridge.ws_url, "img", after=2) as ws:
            await recv(ws)
            await ws.send(
                '{"event": "message", "role": "user", "type": "image", "content": "/etc/passwd"}'
            )
            error = await recv(ws)
            assert error["event"] == "error" and "image" in error["detail"]


async def test_listen_whose_client_hung_up_does_not_take_the_next_message(
    bridge: RunningBridge,
) -> None:
    async with httpx.AsyncClient(base_url=bridge.url, timeout=60) as http:
        await http.post("/api/v1/sessions/ln")
        async with httpx.AsyncClient(base_url=bridge.url, timeout=60) as gone:
            waiting = asyncio.create_task(gone.get("/api/v1/listen/message?timeout=60"))
            await _wait_metric(http, "bridge_listen_waiting", 1, timeout=10)
            waiting.cancel()
            await asyncio.gather(waiting, return_exceptions=True)
        # The abandoned call stops waiting as soon as its connection is gone...
        await _wait_metric(http, "bridge_listen_waiting", 0, timeout=10)
        posted = await http.post(
            "/api/v1/sessions/ln/messages", json={"role": "user", "content": "still here?"}
        )
        assert posted.status_code == 200
        # ...so the message is there for the next Listen.
        got = await http.get("/api/v1/listen/message?timeout=10")
        assert got.status_code == 200
        assert got.json()["content"] == "still here?"
