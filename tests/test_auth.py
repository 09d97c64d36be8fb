"""API key, session tokens, Origin allowlist and rate limiting against a real bridge."""

from __future__ import annotations

import time

import httpx
import jwt
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.support import RunningBridge, wait_until
from tests.wsclient import recv

KEY = "test-key-0123456789"


@pytest.fixture
def locked(start_bridge) -> RunningBridge:  # type: ignore[no-untyped-def]
    return start_bridge(env={"BRIDGE_API_KEY": KEY, "BRIDGE_TOKEN_TTL_S": "60"})


async def _closed_with(url: str, **kwargs: object) -> tuple[int, str]:
    async with connect(url, **kwargs) as ws:  # type: ignore[arg-type]
        with pytest.raises(ConnectionClosed) as closed:
            await recv(ws)
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code, closed.value.rcvd.reason


async def test_http_needs_the_key_but_health_does_not(locked: RunningBridge) -> None:
    async with httpx.AsyncClient(base_url=locked.url) as http:
        for path in ("/healthz", "/readyz", "/metrics"):
            assert (await http.get(path)).status_code == 200
        body = {"role": "ai", "content": "x"}
        missing = await http.post("/api/v1/sessions/s/messages", json=body)
        assert missing.status_code == 401 and "API key" in missing.json()["detail"]
        wrong = await http.post(
            "/api/v1/sessions/s/messages", json=body, headers={"x-api-key": "no"}
        )
        assert wrong.status_code == 401 and "wrong" in wrong.json()["detail"]
        assert (await http.get("/api/v1/sessions")).status_code == 401
        ok = await http.post("/api/v1/sessions/s/messages", json=body, headers={"x-api-key": KEY})
        bearer = await http.get(
            "/api/v1/sessions/s/messages", headers={"Authorization": f"Bearer {KEY}"}
        )
        assert ok.status_code == 200 and bearer.status_code == 200
        # Nothing was stored by the refused requests.
        assert len(bearer.json()) == 2


async def test_socket_needs_a_token_for_its_own_session(
    locked: RunningBridge,
    start_bridge,  # type: ignore[no-untyped-def]
) -> None:
    base = f"{locked.ws_url}/api/v1/sessions"
    async with httpx.AsyncClient(base_url=locked.url, headers={"x-api-key": KEY}) as http:
        minted = (await http.post("/api/v1/sessions/mine/token")).json()
        assert minted["session_id"] == "mine" and minted["expires_at"] > time.time()
        refused = await http.post("/api/v1/sessions/mine/token", headers={"x-api-key": "bad"})
        assert refused.status_code == 401
    token = minted["token"]
    async with connect(f"{base}/mine/ws?token={token}") as ws:
        assert (await recv(ws))["event"] == "hello"
    code, reason = await _closed_with(f"{base}/mine/ws")
    assert code == 1008 and "token" in reason
    code, reason = await _closed_with(f"{base}/other/ws?token={token}")
    assert code == 1008 and "another session" in reason
    later = int(time.time()) + 60
    forged = jwt.encode({"sub": "mine", "exp": later}, "not-the-key-" * 4, "HS256")
    code, reason = await _closed_with(f"{base}/mine/ws?token={forged}")
    assert code == 1008 and "invalid" in reason
    # A real token of the bridge's, expired: mint with a 1 s lifetime and wait it out.
    short = start_bridge(env={"BRIDGE_API_KEY": KEY, "BRIDGE_TOKEN_TTL_S": "1"})
    async with httpx.AsyncClient(base_url=short.url, headers={"x-api-key": KEY}) as http:
        expiring = (await http.post("/api/v1/sessions/mine/token")).json()
    wait_until(lambda: time.time() > expiring["expires_at"] + 1, 5, "the token to expire")
    code, reason = await _closed_with(
        f"{short.ws_url}/api/v1/sessions/mine/ws?token={expiring['token']}"
    )
    assert code == 1008 and "expired" in reason


async def test_foreign_origin_refused_allowed_origin_and_no_origin_pass(
    bridge: RunningBridge,
) -> None:
    url = f"{bridge.ws_url}/api/v1/sessions/o/ws"
    code, reason = await _closed_with(url, origin="http://evil.example")
    assert code == 1008 and "origin" in reason
    async with connect(url, origin="http://localhost:5001") as ws:
        assert (await recv(ws))["event"] == "hello"
    async with connect(url) as ws:  # no Origin: a non-browser client
        assert (await recv(ws))["event"] == "hello"


async def test_token_route_without_a_key_says_so(bridge: RunningBridge) -> None:
    async with httpx.AsyncClient(base_url=bridge.url) as http:
        resp = await http.post("/api/v1/sessions/x/token")
        assert resp.status_code == 404 and "no API key" in resp.json()["detail"]


async def test_rate_limit_answers_429_with_retry_after(start_bridge) -> None:  # type: ignore[no-untyped-def]
    bridge = start_bridge(env={"BRIDGE_RATE_LIMIT_PER_S": "1", "BRIDGE_RATE_LIMIT_BURST": "3"})
    async with httpx.AsyncClient(base_url=bridge.url) as http:
        codes = []
        for i in range(6):
            resp = await http.post(
                "/api/v1/sessions/rl/messages", json={"role": "ai", "content": f"{i}"}
            )
            codes.append(resp.status_code)
            if resp.status_code == 429:
                assert int(resp.headers["retry-after"]) >= 1
                assert "rate limit" in resp.json()["detail"]
        assert codes[:3] == [200, 200, 200] and 429 in codes[3:]
        stored = (await http.get("/api/v1/sessions/rl/messages")).json()
        assert len(stored) == 1 + codes.count(200)  # refused posts stored nothing
        # Reads are not rate limited.
        reads = [(await http.get("/api/v1/sessions")).status_code for _ in range(5)]
        assert reads == [200] * 5


async def test_cross_site_http_requests_are_refused(bridge: RunningBridge) -> None:
    body = {"role": "user", "content": "forged"}
    async with httpx.AsyncClient(base_url=bridge.url) as http:
        cases = [
            ({"Origin": "https://evil.example"}, 403, "origin"),
            ({"Sec-Fetch-Site": "cross-site"}, 403, "cross-site"),
            ({"Host": "evil.example"}, 421, "host"),
        ]
        for headers, status, expected in cases:
            for method, path in (
                ("POST", "/api/v1/sessions/victim/messages"),
                ("POST", "/api/v1/reset/messages"),
                ("GET", "/api/v1/listen/message?timeout=0"),
            ):
                resp = await http.request(method, path, json=body, headers=headers)
                assert resp.status_code == status, (headers, path, resp.text)
                assert expected in resp.json()["detail"]
        # The allowed page origin, a same-site fetch and plain server-side calls still work.
        for headers in ({"Origin": "http://127.0.0.1:5001"}, {"Sec-Fetch-Site": "same-site"}, {}):
            ok = await http.post("/api/v1/sessions/victim/messages", json=body, headers=headers)
            assert ok.status_code == 200
        stored = (await http.get("/api/v1/sessions/victim/messages")).json()
        assert [m["content"] for m in stored].count("forged") == 3


async def test_session_tokens_are_not_written_to_the_log(locked: RunningBridge) -> None:
    async with httpx.AsyncClient(base_url=locked.url, headers={"x-api-key": KEY}) as http:
        token = (await http.post("/api/v1/sessions/logged/token")).json()["token"]
    async with connect(f"{locked.ws_url}/api/v1/sessions/logged/ws?token={token}") as ws:
        assert (await recv(ws))["event"] == "hello"
    log = locked.log_path.read_text()
    assert "/api/v1/sessions/logged/ws" in log and "[redacted]" in log
    assert token not in log
