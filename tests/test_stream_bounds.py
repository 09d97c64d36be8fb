"""Streamed replies stay bounded: line length, frames per subscriber, silence and length.

Each test pushes past one bound against a real bridge process and checks that it holds
(issue 10, items 2, 8 and 14).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx
import psutil

from tests.support import RunningBridge
from tests.wsclient import Event, recv, recv_until, ws_connect


async def _raw_chunked_post(
    port: int, path: str, content_type: str, piece: bytes, max_bytes: int
) -> tuple[int, int]:
    """POST a chunked body of `piece` repeated until the server answers or `max_bytes`
    were sent; return (status, bytes sent before the answer came)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: {content_type}\r\n"
        "Transfer-Encoding: chunked\r\n\r\n".encode()
    )
    answer = asyncio.ensure_future(reader.readline())
    sent = 0
    try:
        while sent < max_bytes and not answer.done():
            writer.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            try:
                await writer.drain()
            except ConnectionError:
                break  # the server answered and closed: the answer is in the reader
            sent += len(piece)
        async with asyncio.timeout(30):
            status_line = await answer
    finally:
        writer.close()
    return int(status_line.split()[1]), sent


async def test_ndjson_line_without_newline_refused_early_and_memory_stays_flat(
    start_bridge,  # type: ignore[no-untyped-def]
) -> None:
    bridge: RunningBridge = start_bridge(env={"BRIDGE_MAX_MESSAGE_BYTES": "65536"})
    proc = psutil.Process(bridge.proc.pid)  # type: ignore[union-attr]
    rss_before = proc.memory_info().rss
    status, sent = await _raw_chunked_post(
        bridge.port,
        "/api/v1/sessions/flood/messages/stream",
        "application/x-ndjson",
        b"x" * 65536,
        max_bytes=256 * 1024 * 1024,
    )
    # The line limit is 6 x 64 KiB + 4 KiB: the answer comes long before 256 MiB.
    assert status == 413
    assert sent < 16 * 1024 * 1024, sent
    assert proc.memory_info().rss - rss_before < 32 * 1024 * 1024
    async with httpx.AsyncClient(base_url=bridge.url, timeout=10) as http:
        messages = (await http.get("/api/v1/sessions/flood/messages")).json()
        assert [m["id"] for m in messages] == ["welcome"]  # nothing half-stored


async def test_plain_text_stream_over_the_limit_refused_while_it_arrives(
    start_bridge,  # type: ignore[no-untyped-def]
) -> None:
    bridge: RunningBridge = start_bridge(env={"BRIDGE_MAX_MESSAGE_BYTES": "65536"})
    status, sent = await _raw_chunked_post(
        bridge.port,
        "/api/v1/sessions/big/messages/stream",
        "text/plain",
        b"y" * 16384,
        max_bytes=256 * 1024 * 1024,
    )
    assert status == 413
    assert sent < 16 * 1024 * 1024, sent


async def _ndjson(deltas: list[str]) -> AsyncIterator[bytes]:
    yield "".join(json.dumps({"delta": d}) + "\n" for d in deltas).encode()


async def test_many_tiny_deltas_are_coalesced_into_few_frames(
    start_bridge,  # type: ignore[no-untyped-def]
) -> None:
    # A subscriber buffer of 50 frames: 2,000 frames for one POST would overflow it.
    bridge: RunningBridge = start_bridge(env={"BRIDGE_SUBSCRIBER_BUFFER": "50"})
    deltas = [f"w{i} " for i in range(2000)]
    async with httpx.AsyncClient(base_url=bridge.url, timeout=30) as http:
        await http.post("/api/v1/sessions/tiny")
        async with ws_connect(bridge.ws_url, "tiny", after=1) as ws:
            assert (await recv(ws))["event"] == "hello"
            resp = await http.post(
                "/api/v1/sessions/tiny/messages/stream",
                content=_ndjson(deltas),
                headers={"content-type": "application/x-ndjson"},
            )
            assert resp.status_code == 200, resp.text
            events = await recv_until(ws, lambda e: e["event"] == "stream.end")
    frames = [e for e in events if e["event"] == "stream.delta"]
    assert "".join(e["delta"] for e in frames) == "".join(deltas)
    assert events[-1]["message"]["content"] == "".join(deltas)
    assert len(frames) <= 20, len(frames)  # merged, not one frame per delta


class _Trickle:
    """A chunked body whose chunks the test releases one at a time."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue()

    async def body(self) -> AsyncIterator[bytes]:
        while (chunk := await self.queue.get()) is not None:
            yield chunk


async def test_silent_stream_times_out_and_stores_nothing(
    start_bridge,  # type: ignore[no-untyped-def]
) -> None:
    bridge: RunningBridge = start_bridge(env={"BRIDGE_STREAM_IDLE_TIMEOUT_S": "1"})
    trickle = _Trickle()
    async with httpx.AsyncClient(base_url=bridge.url, timeout=30) as http:
        await http.post("/api/v1/sessions/quiet")
        async with ws_connect(bridge.ws_url, "quiet", after=1) as ws:
            await recv(ws)
            posting = asyncio.create_task(
                http.post("/api/v1/sessions/quiet/messages/stream", content=trickle.body())
            )
            await trickle.queue.put(b"Hello")
            events = await recv_until(ws, lambda e: e["event"] == "stream.abort", timeout=20)
            assert [e["delta"] for e in events if e["event"] == "stream.delta"] == ["Hello"]
            assert "sent nothing" in events[-1]["detail"]
            # httpx reads the answer only once its body is sent: end the body now.
            await trickle.queue.put(None)
            async with asyncio.timeout(20):
                resp = await posting
        assert resp.status_code == 408, resp.text
        assert "BRIDGE_STREAM_IDLE_TIMEOUT_S" in resp.json()["detail"]
        messages = (await http.get("/api/v1/sessions/quiet/messages")).json()
        assert [m["id"] for m in messages] == ["welcome"]


async def test_stream_that_never_ends_is_cut_at_its_maximum_length(
    start_bridge,  # type: ignore[no-untyped-def]
) -> None:
    bridge: RunningBridge = start_bridge(env={"BRIDGE_STREAM_MAX_S": "1"})
    trickle = _Trickle()
    async with httpx.AsyncClient(base_url=bridge.url, timeout=30) as http:
        await http.post("/api/v1/sessions/endless")
        async with ws_connect(bridge.ws_url, "endless", after=1) as ws:
            await recv(ws)
            posting = asyncio.create_task(
                http.post("/api/v1/sessions/endless/messages/stream", content=trickle.body())
            )
            last: Event = {}
            async with asyncio.timeout(30):
                # Keep it busy: a chunk each time the previous one was seen.
                while last.get("event") != "stream.abort":
                    await trickle.queue.put(b".")
                    last = (
                        await recv_until(
                            ws, lambda e: e["event"] in ("stream.delta", "stream.abort")
                        )
                    )[-1]
                await trickle.queue.put(None)  # httpx reads the answer after its body
                resp = await posting
        assert resp.status_code == 408
        assert "BRIDGE_STREAM_MAX_S" in resp.json()["detail"]
        assert "went on for more than" in last["detail"]
