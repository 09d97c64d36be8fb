"""Bad input gets a 4xx JSON `detail` saying what was wrong and never changes stored data."""

from __future__ import annotations

import httpx
import pytest

from tests.support import RunningBridge

# "." and ".." are sent percent-encoded: clients normalise them away otherwise.
BAD_IDS = [
    "a b",
    "%2E%2E",
    "%2E",
    "x" * 129,
    "x" * 10_000,
    "a%2Fb",
    "a/b",
    "ü",
    "a%00b",
    "semi;colon",
]


async def _snapshot(http: httpx.AsyncClient) -> tuple[list[str], list[dict]]:
    return (
        (await http.get("/api/v1/sessions")).json(),
        (await http.get("/api/v1/sessions/keep/messages")).json(),
    )


@pytest.fixture
async def seeded(bridge: RunningBridge):  # type: ignore[no-untyped-def]
    async with httpx.AsyncClient(base_url=bridge.url) as http:
        await http.post("/api/v1/sessions/keep/messages", json={"role": "user", "content": "kept"})
        yield http


async def test_bad_session_ids(seeded: httpx.AsyncClient) -> None:
    before = await _snapshot(seeded)
    for bad in BAD_IDS:
        for method, suffix in (("POST", "/messages"), ("GET", "/messages"), ("POST", "")):
            resp = await seeded.request(
                method, f"/api/v1/sessions/{bad}{suffix}", json={"role": "ai", "content": "x"}
            )
            assert 400 <= resp.status_code < 500, (bad, method, resp.status_code)
            assert "session id" in resp.json()["detail"], (bad, resp.json())
    assert await _snapshot(seeded) == before


@pytest.mark.parametrize(
    ("body", "status", "expected"),
    [
        ({"role": "robot", "content": "x"}, 422, "role"),
        ({"role": "ai"}, 422, "content"),
        ({"role": "ai", "content": 12}, 422, "content"),
        ({"role": "ai", "content": "x", "type": "video"}, 422, "type"),
        ({"role": "ai", "content": "x", "extra": 1}, 422, "extra"),
        ({"role": "ai", "content": "x", "id": "has space"}, 422, "id"),
        ({"role": "ai", "content": "x" * (256 * 1024 + 1)}, 413, "limit"),
        ([1, 2], 422, "body"),
    ],
)
async def test_bad_message_bodies(
    seeded: httpx.AsyncClient, body: object, status: int, expected: str
) -> None:
    before = await _snapshot(seeded)
    resp = await seeded.post("/api/v1/sessions/keep/messages", json=body)
    assert resp.status_code == status, resp.text
    assert expected in resp.json()["detail"]
    assert await _snapshot(seeded) == before


@pytest.mark.parametrize("raw", [b"{not json", b"", b'{"role": "ai", "content": "\xff"}'])
async def test_malformed_json(seeded: httpx.AsyncClient, raw: bytes) -> None:
    before = await _snapshot(seeded)
    resp = await seeded.post(
        "/api/v1/sessions/keep/messages", content=raw, headers={"content-type": "application/json"}
    )
    assert resp.status_code == 422 and resp.json()["detail"]
    assert await _snapshot(seeded) == before


async def test_bad_query_and_header_values(seeded: httpx.AsyncClient) -> None:
    before = await _snapshot(seeded)
    cases = [
        ("GET", "/api/v1/sessions/keep/messages?limit=-1", None, "limit"),
        ("GET", "/api/v1/sessions/keep/messages?limit=abc", None, "limit"),
        ("GET", "/api/v1/sessions/keep/messages/last?role=robot", None, "role"),
        ("GET", "/api/v1/listen/message?timeout=soon", None, "timeout"),
        ("POST", "/api/v1/chats", {"write_speed": "fast"}, "write_speed"),
        ("POST", "/api/v1/chats", {"write_speed": -1}, "write_speed"),
    ]
    for method, url, body, expected in cases:
        resp = await seeded.request(method, url, json=body)
        assert resp.status_code == 422, (url, resp.text)
        assert expected in resp.json()["detail"], (url, resp.json())
    resp = await seeded.post(
        "/api/v1/sessions/keep/messages",
        json={"role": "ai", "content": "x"},
        headers={"Idempotency-Key": "bad key!"},
    )
    assert resp.status_code == 422 and "Idempotency-Key" in resp.json()["detail"]
    assert await _snapshot(seeded) == before


async def test_unknown_session_reads_are_404_with_detail(seeded: httpx.AsyncClient) -> None:
    for url in (
        "/api/v1/sessions/ghost/messages",
        "/api/v1/sessions/ghost",
        "/api/v1/sessions/ghost/messages/last",
    ):
        resp = await seeded.get(url)
        assert resp.status_code == 404 and "ghost" in resp.json()["detail"]


async def test_idempotent_publish(seeded: httpx.AsyncClient) -> None:
    url = "/api/v1/sessions/idem/messages"
    first = await seeded.post(
        url, json={"role": "ai", "content": "once"}, headers={"Idempotency-Key": "k-1"}
    )
    again = await seeded.post(
        url, json={"role": "ai", "content": "once"}, headers={"Idempotency-Key": "k-1"}
    )
    assert first.status_code == again.status_code == 200 and first.json() == again.json()
    by_id = [
        await seeded.post(url, json={"role": "ai", "content": "b", "id": "m-7"}) for _ in range(2)
    ]
    assert by_id[0].json() == by_id[1].json() and by_id[0].json()["id"] == "m-7"
    contents = [m["content"] for m in (await seeded.get(url)).json()]
    assert contents[1:] == ["once", "b"]
