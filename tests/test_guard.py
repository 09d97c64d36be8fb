"""The browser guard on Listen (a GET that takes a message), against a real bridge."""

from __future__ import annotations

import httpx

from bridge.guard import is_listen_path
from tests.support import RunningBridge

LISTEN_ROUTES = ("/api/v1/listen/message", "/api/v1/sessions/victim/listen")

# What browsers send for the requests a page on another site (or another localhost port,
# which is same-site) can make without CORS: each must not take a message.
BROWSER_HEADERS = [
    {"Origin": "http://127.0.0.1:5001"},  # even the chat page's own (allowed) origin
    {"Origin": "null"},
    {"Sec-Fetch-Site": "same-site"},
    {"Sec-Fetch-Site": "cross-site"},
    {"Sec-Fetch-Mode": "no-cors"},
    {"Sec-Fetch-Mode": "navigate"},
    {"Sec-Fetch-Dest": "image"},
    {"Sec-Fetch-Dest": "script"},
    {"Sec-Fetch-Dest": "style"},
    {"Sec-Fetch-Dest": "document"},
    {"Sec-Fetch-Dest": "iframe"},
    # <img src> from a page on another localhost port:
    {"Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": "image"},
    # a link followed or an address typed into the browser:
    {"Sec-Fetch-Site": "none", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"},
    # fetch(url, {mode: "no-cors"}) from another site, in an old casing:
    {"Sec-Fetch-Site": "Same-Site", "Sec-Fetch-Mode": "No-Cors", "Sec-Fetch-Dest": "empty"},
]


async def _post(http: httpx.AsyncClient, content: str) -> None:
    resp = await http.post(
        "/api/v1/sessions/victim/messages", json={"role": "user", "content": content}
    )
    assert resp.status_code == 200


async def test_listen_from_a_browser_is_refused_and_takes_nothing(bridge: RunningBridge) -> None:
    async with httpx.AsyncClient(base_url=bridge.url, timeout=30) as http:
        await _post(http, "secret")
        for headers in BROWSER_HEADERS:
            for path in LISTEN_ROUTES:
                resp = await http.get(path, params={"timeout": 0}, headers=headers)
                assert resp.status_code == 403, (headers, path, resp.status_code, resp.text)
                assert "refused" in resp.json()["detail"]
        # The message is still there for the real consumer.
        kept = await http.get("/api/v1/listen/message", params={"timeout": 0})
        assert kept.status_code == 200 and kept.json()["content"] == "secret"


async def test_server_side_and_same_origin_listen_still_work(bridge: RunningBridge) -> None:
    same_origin_fetch = {
        "Sec-Fetch-Site": "same-origin",
        "Sec-Fetch-Mode": "cors",
        "Sec-Fetch-Dest": "empty",
    }
    async with httpx.AsyncClient(base_url=bridge.url, timeout=30) as http:
        for headers in ({}, same_origin_fetch):  # plain httpx is what Langflow sends
            for path in LISTEN_ROUTES:
                await _post(http, f"for {path}")
                resp = await http.get(path, params={"timeout": 5}, headers=headers)
                assert resp.status_code == 200 and resp.json()["content"] == f"for {path}"
        # Other routes keep their own rules: a same-site read is not refused.
        listed = await http.get("/api/v1/sessions", headers={"Sec-Fetch-Site": "same-site"})
        assert listed.status_code == 200


def test_only_the_two_listen_routes_are_listen() -> None:
    assert all(is_listen_path(p) for p in LISTEN_ROUTES)
    for other in (
        "/api/v1/sessions/victim/messages",
        "/api/v1/sessions//listen",
        "/api/v1/sessions/a/b/listen",
        "/api/v1/listen/message/x",
        "/api/v1/sessions",
    ):
        assert not is_listen_path(other)
