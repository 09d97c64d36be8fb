"""Listen as a queue (protocol guarantee 5) against a real server."""

from __future__ import annotations

import asyncio

import httpx

from tests.support import RunningBridge


async def _post(http: httpx.AsyncClient, session: str, content: str, role: str = "user") -> None:
    resp = await http.post(
        f"/api/v1/sessions/{session}/messages", json={"role": role, "content": content}
    )
    assert resp.status_code == 200


async def test_message_posted_before_listen_is_kept(bridge: RunningBridge) -> None:
    async with httpx.AsyncClient(base_url=bridge.url, timeout=30) as http:
        await _post(http, "k", "early")
        await _post(http, "k", "bot says", role="ai")  # ai messages are not for Listen
        resp = await http.get("/api/v1/listen/message", params={"timeout": 5})
        assert resp.status_code == 200 and resp.json()["content"] == "early"


async def test_timeout_answers_204(bridge: RunningBridge) -> None:
    async with httpx.AsyncClient(base_url=bridge.url, timeout=30) as http:
        resp = await http.get("/api/v1/listen/message", params={"timeout": 0.2})
        assert resp.status_code == 204
        bad = await http.get("/api/v1/listen/message", params={"timeout": -1})
        assert bad.status_code == 422 and "timeout" in bad.json()["detail"]


async def test_concurrent_listens_get_different_messages(bridge: RunningBridge) -> None:
    n = 20
    async with httpx.AsyncClient(
        base_url=bridge.url, timeout=30, limits=httpx.Limits(max_connections=n + 5)
    ) as http:
        waiting = [
            asyncio.create_task(http.get("/api/v1/listen/message", params={"timeout": 20}))
            for _ in range(n)
        ]
        # Wait until every call is parked in the bridge, so they truly race for messages.
        async with asyncio.timeout(10):
            while "bridge_listen_waiting 20.0" not in (await http.get("/metrics")).text:
                await asyncio.sleep(0.02)  # poll interval
        await asyncio.gather(*(_post(http, f"s{i % 3}", f"q{i}") for i in range(n)))
        answers = await asyncio.gather(*waiting)
    assert all(a.status_code == 200 for a in answers)
    got = sorted(a.json()["content"] for a in answers)
    assert got == sorted(f"q{i}" for i in range(n))


async def test_session_listen_only_takes_its_session(bridge: RunningBridge) -> None:
    async with httpx.AsyncClient(base_url=bridge.url, timeout=30) as http:
        await _post(http, "other", "not mine")
        mine = asyncio.create_task(http.get("/api/v1/sessions/mine/listen", params={"timeout": 10}))
        await _post(http, "mine", "mine!")
        resp = await mine
        assert resp.status_code == 200 and resp.json()["content"] == "mine!"
        assert resp.json()["session_id"] == "mine"
        rest = await http.get("/api/v1/listen/message", params={"timeout": 1})
        assert rest.json()["content"] == "not mine"


async def test_listen_timeout_is_capped_by_setting(start_bridge) -> None:  # type: ignore[no-untyped-def]
    bridge = start_bridge(args=["--listen-timeout-max", "0.3"])
    async with httpx.AsyncClient(base_url=bridge.url, timeout=30) as http:
        resp = await asyncio.wait_for(
            http.get("/api/v1/listen/message", params={"timeout": 3600}), 10
        )
        assert resp.status_code == 204
