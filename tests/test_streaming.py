"""Streamed replies: chunked request bodies pushed as stream.start/delta/end."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx

from tests.support import RunningBridge
from tests.wsclient import recv, recv_until, ws_connect


class Gate:
    """A chunked body whose next chunk is released only when the test says so."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=16)

    async def body(self) -> AsyncIterator[bytes]:
        while (chunk := await self.queue.get()) is not None:
            yield chunk


async def test_stream_grows_live_and_is_stored_whole(bridge: RunningBridge) -> None:
    gate = Gate()
    async with httpx.AsyncClient(base_url=bridge.url, timeout=20) as http:
        await http.post("/api/v1/sessions/st")
        async with ws_connect(bridge.ws_url, "st", after=1) as ws:
            await recv(ws)
            posting = asyncio.create_task(
                http.post("/api/v1/sessions/st/messages/stream", content=gate.body())
            )
            start = await recv_until(ws, lambda e: e["event"] == "stream.start")
            stream_id = start[-1]["stream_id"]
            assert start[-1]["role"] == "ai"
            words = ["Hello", " wor", "ld", " ✓"]
            for word in words:
                # Each chunk is seen before the next is even sent: it is pushed live.
                await gate.queue.put(word.encode())
                delta = await recv_until(ws, lambda e: e["event"] == "stream.delta")
                assert delta[-1] == {"event": "stream.delta", "stream_id": stream_id, "delta": word}
            await gate.queue.put(None)
            end = await recv_until(ws, lambda e: e["event"] == "stream.end")
            resp = await posting
        assert resp.status_code == 200
        stored = resp.json()
        assert stored["content"] == "Hello world ✓" and stored["seq"] == 2
        assert end[-1]["message"] == stored and end[-1]["seq"] == 2
        assert end[-1]["stream_id"] == stream_id
        history = (await http.get("/api/v1/sessions/st/messages")).json()
        assert [m["content"] for m in history] == [history[0]["content"], "Hello world ✓"]


async def test_late_joiner_gets_text_so_far(bridge: RunningBridge) -> None:
    gate = Gate()
    async with (
        httpx.AsyncClient(base_url=bridge.url, timeout=20) as http,
        ws_connect(bridge.ws_url, "late") as first,
    ):
        await recv(first)
        posting = asyncio.create_task(
            http.post(
                "/api/v1/sessions/late/messages/stream",
                params={"role": "ai"},
                content=gate.body(),
            )
        )
        for part in (b"one ", b"two "):
            await gate.queue.put(part)
            await recv_until(first, lambda e: e["event"] == "stream.delta")
        async with ws_connect(bridge.ws_url, "late") as late:
            events = await recv_until(late, lambda e: e["event"] == "stream.delta")
            kinds = [e["event"] for e in events]
            assert kinds[0] == "hello" and "stream.start" in kinds
            assert events[-1]["delta"] == "one two "
            await gate.queue.put(b"three")
            more = await recv_until(late, lambda e: e["event"] == "stream.delta")
            assert more[-1]["delta"] == "three"
            await gate.queue.put(None)
            end = await recv_until(late, lambda e: e["event"] == "stream.end")
            assert end[-1]["message"]["content"] == "one two three"
        assert (await posting).status_code == 200


async def test_ndjson_stream_and_split_utf8(bridge: RunningBridge) -> None:
    body = "".join(json.dumps({"delta": d}) + "\n" for d in ["a", "ü", "c"]).encode()
    async with httpx.AsyncClient(base_url=bridge.url) as http:
        resp = await http.post(
            "/api/v1/sessions/nd/messages/stream",
            content=body,
            headers={"content-type": "application/x-ndjson"},
        )
        assert resp.status_code == 200 and resp.json()["content"] == "aüc"
        raw = "é€".encode()

        async def split() -> AsyncIterator[bytes]:
            for i in range(len(raw)):  # one byte at a time: every character is split
                yield raw[i : i + 1]

        resp = await http.post("/api/v1/sessions/nd/messages/stream", content=split())
        assert resp.status_code == 200 and resp.json()["content"] == "é€"


async def test_bad_stream_aborts_and_stores_nothing(bridge: RunningBridge) -> None:
    async with httpx.AsyncClient(base_url=bridge.url) as http:
        await http.post("/api/v1/sessions/ab")
        async with ws_connect(bridge.ws_url, "ab", after=1) as ws:
            await recv(ws)
            resp = await http.post(
                "/api/v1/sessions/ab/messages/stream",
                content=b'{"delta": "ok"}\nnot json\n',
                headers={"content-type": "application/x-ndjson"},
            )
            assert resp.status_code == 422 and "not JSON" in resp.json()["detail"]
            events = await recv_until(ws, lambda e: e["event"] == "stream.abort")
            assert "not JSON" in events[-1]["detail"]
            bad_role = await http.post(
                "/api/v1/sessions/ab/messages/stream?role=robot", content=b"x"
            )
            assert bad_role.status_code == 422 and "role" in bad_role.json()["detail"]
        assert len((await http.get("/api/v1/sessions/ab/messages")).json()) == 1


async def test_stream_over_the_size_limit_is_refused(start_bridge) -> None:  # type: ignore[no-untyped-def]
    bridge = start_bridge(env={"BRIDGE_MAX_MESSAGE_BYTES": "1000"})
    async with httpx.AsyncClient(base_url=bridge.url) as http:

        async def big() -> AsyncIterator[bytes]:
            for _ in range(20):
                yield b"x" * 100

        resp = await http.post("/api/v1/sessions/big/messages/stream", content=big())
        assert resp.status_code == 413 and "1000" in resp.json()["detail"]
        assert len((await http.get("/api/v1/sessions/big/messages")).json()) == 1
