"""Stop: `POST /sessions/{id}/stop` and the WebSocket frame `{"event": "stop"}` end the
reply streaming in a session; the partial text is stored, marked `stopped`."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx
import pytest
from websockets.asyncio.client import ClientConnection

from tests.inprocess import InProcessBridge
from tests.support import RunningBridge
from tests.wsclient import recv, recv_until, ws_connect


class Producer:
    """A `/messages/stream` body that sends `first` at once, then waits for more chunks
    the test never gives (an endless producer) and records whether it was asked for more."""

    def __init__(self, first: list[str]) -> None:
        self.first = first
        self.more: asyncio.Queue[bytes] = asyncio.Queue(maxsize=4)

    async def body(self) -> AsyncIterator[bytes]:
        for delta in self.first:
            yield (json.dumps({"delta": delta}) + "\n").encode()
        while True:
            yield await self.more.get()


async def streamed_text(ws: ClientConnection, expected: str) -> str:
    """The stream's text as deltas arrive on `ws`, once it is `expected` (bounded waits)."""
    text = ""
    while text != expected:
        events = await recv_until(ws, lambda e: e["event"] == "stream.delta")
        text += "".join(e["delta"] for e in events if e["event"] == "stream.delta")
        assert expected.startswith(text), text
    return text


async def answered(posting: asyncio.Task[httpx.Response], producer: Producer) -> str:
    """Keep `producer` producing until its request ends, as a real producer would (httpx
    sends the whole body before it reads the answer, so it learns of the answer when a
    write fails on the connection the bridge closed). What ended it, within 10 s."""
    async with asyncio.timeout(10):
        while not posting.done():
            await producer.more.put(b'{"delta": " never stored"}\n')
            await asyncio.wait((posting,), timeout=0.05)  # the next chunk's pace
    try:
        resp = posting.result()
    except (httpx.WriteError, httpx.RemoteProtocolError, httpx.ReadError) as exc:
        return type(exc).__name__
    assert resp.status_code == 200, resp.text
    return resp.text


@pytest.mark.parametrize("how", ["http", "ws"])
async def test_stop_stores_the_partial_reply_marked_and_answers_the_producer(
    app_bridge: InProcessBridge, how: str
) -> None:
    producer = Producer(["Once upon", " a time"])
    async with (
        httpx.AsyncClient(base_url=app_bridge.url, timeout=20) as http,
        ws_connect(app_bridge.ws_url, "tale") as viewer,
        ws_connect(app_bridge.ws_url, "tale") as stopper,
    ):
        await recv(viewer)
        await recv(stopper)
        posting = asyncio.create_task(
            http.post(
                "/api/v1/sessions/tale/messages/stream",
                content=producer.body(),
                headers={"content-type": "application/x-ndjson"},
            )
        )
        # Both chunks reached the viewer: the stream is under way.
        assert await streamed_text(viewer, "Once upon a time") == "Once upon a time"
        if how == "http":
            answer = await http.post("/api/v1/sessions/tale/stop")
            assert answer.status_code == 200
            assert answer.json() == {"session_id": "tale", "stopping": True}
        else:
            await stopper.send(json.dumps({"event": "stop"}))
        end = (await recv_until(viewer, lambda e: e["event"] == "stream.end"))[-1]
        assert end["message"]["content"] == "Once upon a time"
        assert end["message"]["stopped"] is True
        other = (await recv_until(stopper, lambda e: e["event"] == "stream.end"))[-1]
        assert other["message"] == end["message"]
        # The producer's request ends (answered, then the connection closed).
        ended = await answered(posting, producer)
        assert "never stored" not in ended
        history = (await http.get("/api/v1/sessions/tale/messages")).json()
        assert history[-1]["content"] == "Once upon a time" and history[-1]["stopped"] is True
        assert "stopped" not in history[0]  # the welcome: absent when not stopped


async def test_a_producer_that_reads_gets_the_stored_partial_at_once(
    app_bridge: InProcessBridge,
) -> None:
    """A producer that reads while it sends (curl, a raw socket) is answered with the
    stored partial message while its body is still open."""
    reader, writer = await asyncio.open_connection("127.0.0.1", app_bridge.port)
    try:
        writer.write(
            b"POST /api/v1/sessions/raw/messages/stream HTTP/1.1\r\nhost: 127.0.0.1\r\n"
            b"content-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n"
            b"9\r\nhalf done\r\n"
        )
        await writer.drain()
        async with httpx.AsyncClient(base_url=app_bridge.url, timeout=20) as http:
            async with ws_connect(app_bridge.ws_url, "raw") as viewer:
                await recv(viewer)
                await streamed_text(viewer, "half done")
            await http.post("/api/v1/sessions/raw/stop")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 200")
        length = int(
            next(
                line.split(b":")[1]
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
        )
        body = json.loads(await asyncio.wait_for(reader.readexactly(length), 10))
        assert body["content"] == "half done" and body["stopped"] is True
    finally:
        writer.close()


async def test_stop_with_nothing_streaming_changes_nothing(app_bridge: InProcessBridge) -> None:
    async with httpx.AsyncClient(base_url=app_bridge.url, timeout=20) as http:
        await http.post("/api/v1/sessions/calm/messages", json={"role": "user", "content": "hi"})
        answer = await http.post("/api/v1/sessions/calm/stop")
        assert answer.status_code == 200
        # A later stream is not stopped by the earlier stop.
        resp = await http.post("/api/v1/sessions/calm/messages/stream", content=b"whole reply")
        assert resp.status_code == 200
        assert resp.json()["content"] == "whole reply" and "stopped" not in resp.json()


async def test_stop_ends_only_its_own_session(app_bridge: InProcessBridge) -> None:
    mine, other = Producer(["mine"]), Producer(["other"])
    async with (
        httpx.AsyncClient(base_url=app_bridge.url, timeout=20) as http,
        ws_connect(app_bridge.ws_url, "s-other") as watcher,
    ):
        await recv(watcher)
        posts = [
            asyncio.create_task(
                http.post(
                    f"/api/v1/sessions/{sid}/messages/stream",
                    content=p.body(),
                    headers={"content-type": "application/x-ndjson"},
                )
            )
            for sid, p in (("s-mine", mine), ("s-other", other))
        ]
        await recv_until(watcher, lambda e: e["event"] == "stream.delta")
        await http.post("/api/v1/sessions/s-mine/stop")
        await answered(posts[0], mine)
        assert not posts[1].done()
        await other.more.put(b'{"delta": " goes on"}\n')
        delta = await recv_until(watcher, lambda e: e["event"] == "stream.delta")
        assert delta[-1]["delta"] == " goes on"
        await http.post("/api/v1/sessions/s-other/stop")
        # The stop is on its way when the POST returns: the reply is stored at stream.end.
        await recv_until(watcher, lambda e: e["event"] == "stream.end")
        await answered(posts[1], other)
        history = (await http.get("/api/v1/sessions/s-other/messages")).json()
        assert history[-1]["content"] == "other goes on" and history[-1]["stopped"] is True


def test_bad_stop_requests_are_refused(bridge: RunningBridge) -> None:
    with httpx.Client(base_url=bridge.url, timeout=10) as http:
        bad = http.post("/api/v1/sessions/" + "x" * 300 + "/stop")
        assert bad.status_code in (404, 422)
        assert "detail" in bad.json()


async def test_deleting_the_session_aborts_its_stream_and_stores_nothing(
    app_bridge: InProcessBridge,
) -> None:
    producer = Producer(["about to vanish"])
    async with (
        httpx.AsyncClient(base_url=app_bridge.url, timeout=20) as http,
        ws_connect(app_bridge.ws_url, "gone") as viewer,
    ):
        await recv(viewer)
        posting = asyncio.create_task(
            http.post(
                "/api/v1/sessions/gone/messages/stream",
                content=producer.body(),
                headers={"content-type": "application/x-ndjson"},
            )
        )
        await streamed_text(viewer, "about to vanish")
        assert (await http.delete("/api/v1/sessions/gone")).status_code == 200
        ended = await answered(posting, producer)
        assert "was deleted during the reply" in ended or "Error" in ended, ended
        # The reply did not bring the session back.
        assert (await http.get("/api/v1/sessions/gone")).status_code == 404
