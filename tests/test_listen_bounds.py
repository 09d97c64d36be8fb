"""Listen backlog per session, the sessions quota, and Listen calls whose client hung up,
against real bridge processes."""

from __future__ import annotations

import asyncio
import re

import httpx

from tests.conftest import StartBridge


async def _post(http: httpx.AsyncClient, session: str, content: str) -> httpx.Response:
    return await http.post(
        f"/api/v1/sessions/{session}/messages", json={"role": "user", "content": content}
    )


async def _listen_waiting(http: httpx.AsyncClient) -> float:
    text = (await http.get("/metrics")).text
    found = re.search(r"^bridge_listen_waiting (\S+)$", text, re.M)
    assert found is not None, "no bridge_listen_waiting gauge"
    return float(found.group(1))


async def _until_waiting(http: httpx.AsyncClient, count: float, within: float = 10) -> None:
    try:
        async with asyncio.timeout(within):
            while await _listen_waiting(http) != count:
                await asyncio.sleep(0.02)  # poll interval of /metrics
    except TimeoutError:
        raise AssertionError(f"{count} Listen calls were not waiting within {within}s") from None


async def test_a_flood_in_one_session_keeps_another_sessions_message(
    start_bridge: StartBridge,
) -> None:
    bridge = start_bridge("sqlite", env={"BRIDGE_LISTEN_BACKLOG_PER_SESSION": "3"})
    async with httpx.AsyncClient(base_url=bridge.url, timeout=30) as http:
        assert (await _post(http, "quiet", "keep me")).status_code == 200
        for i in range(10):
            assert (await _post(http, "flood", f"f{i}")).status_code == 200
        got = []
        while True:
            resp = await http.get("/api/v1/listen/message", params={"timeout": 0})
            if resp.status_code != 200:
                break
            got.append(resp.json()["content"])
        assert got == ["keep me", "f7", "f8", "f9"]  # the flood lost only its own oldest
        assert resp.status_code == 204


async def test_sessions_beyond_the_quota_are_refused_with_429(start_bridge: StartBridge) -> None:
    bridge = start_bridge("sqlite", env={"BRIDGE_SESSIONS_MAX": "2"})
    async with httpx.AsyncClient(base_url=bridge.url, timeout=30) as http:
        assert (await _post(http, "a", "x")).status_code == 200
        assert (await _post(http, "b", "x")).status_code == 200
        refused = await _post(http, "c", "x")
        assert refused.status_code == 429, refused.text
        assert "BRIDGE_SESSIONS_MAX" in refused.json()["detail"]
        assert (await _post(http, "a", "more")).status_code == 200  # existing ones go on
        listed = await http.get("/api/v1/sessions")
        assert listed.json() == ["a", "b"]
        assert (await http.get("/api/v1/sessions/c/messages")).status_code == 404


async def test_a_listen_whose_client_hung_up_takes_no_message(start_bridge: StartBridge) -> None:
    bridge = start_bridge("sqlite")
    async with httpx.AsyncClient(base_url=bridge.url, timeout=30) as http:
        async with httpx.AsyncClient(base_url=bridge.url, timeout=60) as doomed:
            gone = asyncio.create_task(doomed.get("/api/v1/listen/message", params={"timeout": 60}))
            await _until_waiting(http, 1)
            gone.cancel()  # the caller gives up; its connection closes
            await asyncio.gather(gone, return_exceptions=True)
        await _until_waiting(http, 0)  # the bridge stopped waiting for it at once
        assert (await _post(http, "s", "for the next caller")).status_code == 200
        resp = await http.get("/api/v1/listen/message", params={"timeout": 5})
        assert resp.status_code == 200 and resp.json()["content"] == "for the next caller"
