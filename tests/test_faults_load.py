"""Faults under load, against real bridge processes (issue 6, "Evidence").

- kill -9 in the middle of concurrent publishers and subscribers (SQLite): nothing answered
  200 is lost, and subscribers resuming with `after` end up with every message exactly once;
- 2,000 sockets reconnecting at once: every one gets `hello`, its missed messages and the
  next live one, and nothing of one session shows up in another;
- malformed and oversized frames: 1009 for a frame over the limit, `error` events for the
  rest, and neither the other sockets nor stored data notice;
- session ids built to escape a path, on every route and the WebSocket: 4xx with a reason,
  no file outside the data folder, no other session touched.

Frames and requests that no well-behaved client library would send (invalid UTF-8, raw
`../` in a request target, unmasked nonsense) are written by hand on a raw socket: `RawWs`
and `raw_http` below. Every wait is bounded; all traffic goes to 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import resource
import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from tests.conftest import StartBridge
from tests.support import ROOT, RunningBridge
from tests.wsclient import Event, recv, recv_messages, recv_until, ws_connect

# The log line uvicorn writes when a route raises: the bridge crashed on that input.
CRASH = "Exception in ASGI application"


# -- raw HTTP and WebSocket, for input no client library would send ---------------------


@dataclass
class RawResponse:
    """Status, lower-cased headers and body of one raw HTTP exchange."""

    status: int
    headers: dict[str, str]
    body: bytes

    def detail(self) -> str:
        """The JSON `detail`, or "" if the body is not the bridge's JSON error."""
        if not self.headers.get("content-type", "").startswith("application/json"):
            return ""
        try:
            data = json.loads(self.body)
        except ValueError:
            return ""
        return str(data.get("detail", "")) if isinstance(data, dict) else ""


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return status, headers


async def raw_http(
    port: int, method: str, target: str, body: bytes = b"", content_type: str = ""
) -> RawResponse:
    """One request with `target` sent byte for byte (no normalisation, no re-encoding)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        head = f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n"
        if content_type:
            head += f"Content-Type: {content_type}\r\n"
        head += f"Content-Length: {len(body)}\r\n\r\n"
        writer.write(head.encode("latin-1") + body)
        await writer.drain()
        async with asyncio.timeout(10):
            status, headers = await _read_head(reader)
            rest = await reader.read()  # Connection: close, so the body ends at EOF
        return RawResponse(status, headers, rest)
    finally:
        writer.close()


class RawWs:
    """A WebSocket client that sends frames exactly as given (masked, as RFC 6455 wants)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.status = 0

    @classmethod
    async def open(cls, port: int, target: str, timeout: float = 10.0) -> RawWs:
        """Handshake on `target`; `status` is 101 if the bridge accepted the upgrade."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode("latin-1")
        )
        ws = cls(reader, writer)
        try:
            async with asyncio.timeout(timeout):
                ws.status, _ = await _read_head(reader)
        except BaseException:
            writer.close()
            raise
        return ws

    def send(self, opcode: int, payload: bytes, fin: bool = True) -> None:
        """One frame: opcode 1 text, 2 binary, 0 continuation, 9 ping."""
        mask = os.urandom(4)
        first = (0x80 if fin else 0) | opcode
        n = len(payload)
        if n < 126:
            head = struct.pack("!BB", first, 0x80 | n)
        elif n < 65536:
            head = struct.pack("!BBH", first, 0x80 | 126, n)
        else:
            head = struct.pack("!BBQ", first, 0x80 | 127, n)
        # XOR with the repeated 4-byte mask, done on integers: fast for a megabyte too.
        repeated = (mask * (n // 4 + 1))[:n]
        masked = (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(
            n, "big"
        )
        self.writer.write(head + mask + masked)

    async def frame(self, timeout: float = 10.0) -> tuple[int, bytes]:
        """The next frame the bridge sent: (opcode, payload)."""
        async with asyncio.timeout(timeout):
            b0, b1 = await self.reader.readexactly(2)
            n = b1 & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", await self.reader.readexactly(2))
            elif n == 127:
                (n,) = struct.unpack("!Q", await self.reader.readexactly(8))
            return b0 & 0x0F, await self.reader.readexactly(n)

    async def event(self, timeout: float = 10.0) -> Event:
        """The next JSON event other than `presence`; fails on a close frame."""
        while True:
            opcode, payload = await self.frame(timeout)
            assert opcode == 1, f"expected a text frame, got opcode {opcode}: {payload[:200]!r}"
            event: Event = json.loads(payload)
            if event["event"] != "presence":
                return event

    async def closed(self, timeout: float = 10.0) -> tuple[int, str]:
        """Read up to the close frame; its (code, reason)."""
        while True:
            opcode, payload = await self.frame(timeout)
            if opcode == 8:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                return code, payload[2:].decode("utf-8", "replace")

    async def live(self) -> None:
        """Skip hello and the replay: everything the bridge sent before the pong to a ping
        sent now (frames on one socket arrive in order)."""
        self.send(1, b'{"event": "ping"}')
        while (await self.event())["event"] != "pong":
            pass

    def close(self) -> None:
        """Drop the connection (no close handshake: the bridge must cope with that too)."""
        self.writer.close()


# -- helpers ----------------------------------------------------------------------------


async def _history(http: httpx.AsyncClient, session: str) -> list[dict[str, Any]]:
    """Every stored message of `session`, oldest first."""
    resp = await http.get(f"/api/v1/sessions/{session}/messages")
    assert resp.status_code == 200, resp.text
    messages: list[dict[str, Any]] = resp.json()
    return messages


def _no_crash(bridge: RunningBridge) -> None:
    """Fail if the bridge logged an exception that escaped a route (a crash on input)."""
    log = bridge.log_path.read_text(errors="replace")
    assert CRASH not in log, log[log.index(CRASH) - 200 :][:3000]


# -- (a) kill -9 under load -------------------------------------------------------------


@pytest.mark.slow
async def test_kill_9_under_load_then_resume_with_after(start_bridge: StartBridge) -> None:
    """Several publishers and subscribers on several sessions; SIGKILL mid-load; restart.

    Every message answered 200 is in history with the seq it was answered with, and each
    subscriber, resuming with `after` = the last seq it saw, ends up with seqs 1..last of
    its session exactly once, in order, each the same message as history's.
    """
    bridge = start_bridge(store="sqlite")
    sessions = [f"load-{i}" for i in range(4)]
    subs_per_session, pubs_per_session, target = 2, 3, 400
    answered: list[dict[str, Any]] = []
    enough = asyncio.Event()

    async with httpx.AsyncClient(
        base_url=bridge.url, timeout=10, limits=httpx.Limits(max_connections=40)
    ) as http:
        for s in sessions:
            assert (await http.post(f"/api/v1/sessions/{s}")).status_code == 200

        # Subscribers: each keeps every (seq, id) it received until the bridge dies.
        seen: dict[int, list[tuple[int, str]]] = {}
        ready = 0
        all_ready = asyncio.Event()

        async def subscribe(n: int, session: str) -> None:
            nonlocal ready
            got = seen.setdefault(n, [])
            try:
                async with ws_connect(bridge.ws_url, session) as ws:
                    await recv_until(ws, lambda e: e["event"] == "hello")
                    welcome = (await recv_messages(ws, 1))[0]
                    got.append((welcome["seq"], welcome["id"]))
                    ready += 1
                    if ready == len(sessions) * subs_per_session:
                        all_ready.set()
                    while True:
                        event = await recv(ws, timeout=30)
                        if event["event"] == "message":
                            got.append((event["seq"], event["message"]["id"]))
            except ConnectionClosed:
                return  # the kill: resume below with `after`

        async def publish(n: int, session: str) -> None:
            for i in range(10_000):
                try:
                    resp = await http.post(
                        f"/api/v1/sessions/{session}/messages",
                        json={"role": "user", "content": f"p{n}-{i}"},
                    )
                except httpx.HTTPError:
                    return  # the bridge died under this request: it was never answered
                assert resp.status_code == 200, resp.text
                answered.append(resp.json())
                if len(answered) >= target:
                    enough.set()

        subscriber_of = [s for s in sessions for _ in range(subs_per_session)]
        sub_tasks = [asyncio.create_task(subscribe(n, s)) for n, s in enumerate(subscriber_of)]
        await asyncio.wait_for(all_ready.wait(), 20)
        pub_tasks = [
            asyncio.create_task(publish(n, s))
            for n, s in enumerate(s for s in sessions for _ in range(pubs_per_session))
        ]
        await asyncio.wait_for(enough.wait(), 60)
        bridge.kill()
        await asyncio.wait_for(asyncio.gather(*pub_tasks, *sub_tasks), 30)

    assert len(answered) >= target
    bridge.start()  # the same port, the same database file
    async with httpx.AsyncClient(base_url=bridge.url, timeout=10) as http:
        history = {s: await _history(http, s) for s in sessions}
        by_id = {m["id"]: m for msgs in history.values() for m in msgs}
        lost = [a for a in answered if a["id"] not in by_id]
        assert not lost, f"{len(lost)} of {len(answered)} answered messages lost, e.g. {lost[0]}"
        moved = [a for a in answered if by_id[a["id"]]["seq"] != a["seq"]]
        assert not moved, f"answered seq differs from stored seq: {moved[:3]}"
        for s, msgs in history.items():
            assert [m["seq"] for m in msgs] == list(range(1, len(msgs) + 1)), s

        # Resume every subscriber, then publish a few more: replay, then live.
        resumed: list[tuple[int, str, ClientConnection]] = []
        for n, s in enumerate(subscriber_of):
            last = seen[n][-1][0]
            ws = await ws_connect(bridge.ws_url, s, after=last)
            resumed.append((n, s, ws))
        try:
            for s in sessions:
                for i in range(3):
                    resp = await http.post(
                        f"/api/v1/sessions/{s}/messages", json={"role": "ai", "content": f"r{i}"}
                    )
                    assert resp.status_code == 200
            final = {s: await _history(http, s) for s in sessions}
            for n, s, ws in resumed:
                missing = len(final[s]) - seen[n][-1][0]
                more = await recv_messages(ws, missing, timeout=20)
                got = seen[n] + [(m["seq"], m["id"]) for m in more]
                want = [(m["seq"], m["id"]) for m in final[s]]
                assert got == want, f"subscriber {n} of {s}: {len(got)} vs {len(want)} messages"
        finally:
            for _, _, ws in resumed:
                await ws.close()


# -- (b) 2,000 sockets reconnecting at once ---------------------------------------------


def _raise_nofile(wanted: int) -> None:
    """This process holds one fd per socket: raise the soft limit (up to the hard one)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < limit:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    if limit < wanted:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {wanted}")


@pytest.mark.slow
async def test_2000_sockets_reconnect_at_once(start_bridge: StartBridge) -> None:
    """A reconnect storm (as after a restart): 2,000 sockets over 20 sessions open at once,
    each with `after`. All get `hello`, exactly the messages they missed, then the next
    live one; none gets an error or another session's data; a bystander is untouched."""
    sockets, n_sessions = 2000, 20
    _raise_nofile(sockets + 1000)
    # Every socket comes from 127.0.0.1: lift the per-client cap (500) for the storm.
    bridge = start_bridge(store="sqlite", env={"BRIDGE_SOCKETS_PER_CLIENT_MAX": "5000"})
    sessions = [f"storm-{i:02d}" for i in range(n_sessions)]
    async with httpx.AsyncClient(base_url=bridge.url, timeout=30) as http:
        for s in [*sessions, "bystander"]:
            for i in range(3):  # seq 2..4 after the welcome
                body = {"role": "user", "content": f"{s} before {i}"}
                assert (await http.post(f"/api/v1/sessions/{s}/messages", json=body)).is_success
        bystander = await _history(http, "bystander")
        ids_before = (await http.get("/api/v1/sessions")).json()

        foreign: list[Event] = []
        errors: list[Event] = []

        async def reconnect(i: int) -> tuple[str, ClientConnection]:
            session = sessions[i % n_sessions]
            # after=2: each socket missed seq 3 and 4, as a client back from an outage.
            ws = await ws_connect(bridge.ws_url, session, after=2, open_timeout=60)
            events = await recv_until(ws, lambda e: e.get("seq") == 4, timeout=60)
            hello = events[0]
            assert hello["event"] == "hello" and hello["session_id"] == session, hello
            replay = [e for e in events if e["event"] == "message"]
            assert [e["seq"] for e in replay] == [3, 4], (session, events)
            foreign.extend(e for e in replay if e["message"]["session_id"] != session)
            errors.extend(e for e in events if e["event"] == "error")
            return session, ws

        # The burst: every connect starts in the same loop iteration.
        results = await asyncio.wait_for(
            asyncio.gather(*(reconnect(i) for i in range(sockets)), return_exceptions=True), 120
        )
        failed = [r for r in results if isinstance(r, BaseException)]
        opened = [r for r in results if not isinstance(r, BaseException)]
        try:
            assert not failed, f"{len(failed)} of {sockets} reconnects failed: {failed[:3]!r}"
            for s in sessions:
                body = {"role": "ai", "content": f"live for {s}"}
                assert (await http.post(f"/api/v1/sessions/{s}/messages", json=body)).is_success

            async def live(session: str, ws: ClientConnection) -> None:
                events = await recv_until(ws, lambda e: e["event"] == "message", timeout=60)
                message = events[-1]["message"]
                assert events[-1]["seq"] == 5 and message["content"] == f"live for {session}"
                foreign.extend(
                    e for e in events if e.get("message", {}).get("session_id", session) != session
                )
                errors.extend(e for e in events if e["event"] == "error")

            await asyncio.wait_for(asyncio.gather(*(live(s, ws) for s, ws in opened)), 120)
            assert not foreign, f"messages of another session delivered: {foreign[:3]}"
            assert not errors, f"error events: {errors[:3]}"
            metrics = (await http.get("/metrics")).text
            assert f"bridge_ws_connections {float(sockets)}" in metrics
        finally:
            await asyncio.wait_for(
                asyncio.gather(*(ws.close() for _, ws in opened), return_exceptions=True), 60
            )
        assert await _history(http, "bystander") == bystander
        assert (await http.get("/api/v1/sessions")).json() == ids_before
        for s in sessions:
            assert [m["seq"] for m in await _history(http, s)] == [1, 2, 3, 4, 5]
    _no_crash(bridge)


# -- (c) malformed and oversized frames -------------------------------------------------

FRAME_LIMIT = 64 * 1024  # BRIDGE_MAX_FRAME_BYTES for these tests: big frames stay cheap


@pytest.fixture
async def frames_bridge(start_bridge: StartBridge):  # type: ignore[no-untyped-def]
    """A SQLite bridge with a 64 KiB frame limit; session `target` and `other` each with a
    message and a watcher socket that must keep working whatever the attacker sends."""
    bridge = start_bridge(store="sqlite", env={"BRIDGE_MAX_FRAME_BYTES": str(FRAME_LIMIT)})
    async with httpx.AsyncClient(base_url=bridge.url, timeout=10) as http:
        for s in ("target", "other"):
            body = {"role": "user", "content": f"{s} kept"}
            assert (await http.post(f"/api/v1/sessions/{s}/messages", json=body)).is_success
        async with (
            ws_connect(bridge.ws_url, "target", after=2) as w1,
            ws_connect(bridge.ws_url, "other", after=2) as w2,
        ):
            for w in (w1, w2):
                await recv_until(w, lambda e: e["event"] == "hello")
            before = {s: await _history(http, s) for s in ("target", "other")}
            yield bridge, http, (w1, w2), before


async def _unaffected(
    bridge: RunningBridge,
    http: httpx.AsyncClient,
    watchers: tuple[ClientConnection, ClientConnection],
    before: dict[str, list[dict[str, Any]]],
) -> None:
    """The watchers get the next live message (and no error); history only grew by it."""
    for s, w in zip(("target", "other"), watchers, strict=True):
        assert await _history(http, s) == before[s], f"{s} changed"
        body = {"role": "ai", "content": f"after the attack on {s}"}
        assert (await http.post(f"/api/v1/sessions/{s}/messages", json=body)).is_success
        events = await recv_until(w, lambda e: e["event"] in ("message", "error"))
        assert events[-1]["event"] == "message", events
        assert events[-1]["message"]["content"] == body["content"]
        assert events[-1]["seq"] == before[s][-1]["seq"] + 1
    assert (await http.get("/healthz")).status_code == 200
    _no_crash(bridge)


async def test_oversized_frame_closes_that_socket_with_1009(frames_bridge) -> None:  # type: ignore[no-untyped-def]
    bridge, http, watchers, before = frames_bridge
    content = "x" * FRAME_LIMIT  # the JSON around it takes the frame over the limit
    big = json.dumps({"event": "message", "role": "user", "content": content}).encode()
    cases = {
        "one frame": [(1, big, True)],
        # The limit is on the message: fragments that add up to too much count too.
        "fragments": [(1, big[: len(big) // 2], False), (0, big[len(big) // 2 :], True)],
        "binary": [(2, b"\0" * (FRAME_LIMIT + 1), True)],
    }
    for name, frames in cases.items():
        ws = await RawWs.open(bridge.port, "/api/v1/sessions/target/ws?after=2")
        try:
            assert ws.status == 101
            await ws.live()
            for opcode, payload, fin in frames:
                ws.send(opcode, payload, fin)
            code, _ = await ws.closed()
            assert code == 1009, (name, code)
        finally:
            ws.close()
    await _unaffected(bridge, http, watchers, before)


def _peak_rss(pid: int) -> int:
    """The process's peak resident set size so far (VmHWM), in bytes: a burst that came
    and went between two samples still shows."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/<pid>/status")


@pytest.mark.parametrize(
    ("route", "content_type"),
    [("messages", "application/json"), ("messages/stream", "text/plain")],
)
async def test_oversized_http_body_is_refused_without_buffering_it(
    bridge: RunningBridge, route: str, content_type: str
) -> None:
    """The HTTP counterpart of the frame limit: a 64 MiB body to a route whose limit is
    ~1.5 MiB is refused (413, or the connection closed before the body was all sent), and
    the bridge's peak memory does not grow by the body's size: it stops reading at the
    limit instead of buffering everything first."""
    assert bridge.proc is not None
    size, chunk = 64 * 1024 * 1024, b"x" * (1024 * 1024)
    peak_before = _peak_rss(bridge.proc.pid)

    async def body() -> Any:
        for _ in range(size // len(chunk)):
            yield chunk

    async with httpx.AsyncClient(base_url=bridge.url, timeout=30) as http:
        try:
            resp = await http.post(
                f"/api/v1/sessions/big/{route}",
                content=body(),
                headers={"content-type": content_type, "content-length": str(size)},
            )
            assert resp.status_code == 413, (resp.status_code, resp.text[:200])
        except (httpx.WriteError, httpx.RemoteProtocolError, httpx.ReadError):
            pass  # the bridge refused early and closed the connection: fine
        grown = _peak_rss(bridge.proc.pid) - peak_before
        assert grown < 16 * 1024 * 1024, f"peak RSS grew by {grown >> 20} MiB for a refused body"
        ok = await http.post("/api/v1/sessions/big/messages", json={"role": "ai", "content": "x"})
        assert ok.status_code == 200
    _no_crash(bridge)


async def test_malformed_frames_get_error_events(frames_bridge) -> None:  # type: ignore[no-untyped-def]
    """Each bad frame gets an `error` event and the socket stays usable (a ping after it is
    answered); nothing is stored; the watchers notice nothing; the bridge logs no crash."""
    bridge, http, watchers, before = frames_bridge
    depth = FRAME_LIMIT // 2 - 100  # as deep as fits in one frame: "[" * depth + "]" * depth
    bad: dict[str, tuple[int, bytes]] = {
        "binary": (2, b"\x00\x01\x02"),
        "binary JSON": (2, b'{"event": "message", "role": "user", "content": "b"}'),
        "not JSON": (1, b"{not json"),
        "empty": (1, b""),
        "JSON array": (1, b"[1, 2]"),
        "JSON string": (1, b'"message"'),
        "no event": (1, b'{"role": "user", "content": "x"}'),
        "unknown event": (1, b'{"event": "subscribe", "session": "other"}'),
        "bad role": (1, b'{"event": "message", "role": "admin", "content": "x"}'),
        "extra field": (1, b'{"event": "message", "role": "user", "content": "x", "seq": 1}'),
        "content not text": (1, b'{"event": "message", "role": "user", "content": {"a": 1}}'),
        "nested array": (1, b"[" * depth + b"]" * depth),
        "nested in a message": (
            1,
            b'{"event": "message", "role": "user", "content": "x", "id": '
            + b"[" * depth
            + b"]" * depth
            + b"}",
        ),
        "nested objects": (1, b'{"a":' * (depth // 3) + b"1" + b"}" * (depth // 3)),
        "huge number": (1, b'{"event": "message", "role": "user", "content": 1e999999}'),
        "NaN": (1, b'{"event": "message", "role": "user", "content": NaN}'),
    }
    problems: list[str] = []

    async def fresh() -> RawWs:
        ws = await RawWs.open(bridge.port, "/api/v1/sessions/target/ws?after=2")
        assert ws.status == 101
        await ws.live()
        return ws

    ws = await fresh()
    try:
        for name, (opcode, payload) in bad.items():
            ws.send(opcode, payload)
            try:
                event = await ws.event()
            except (AssertionError, asyncio.IncompleteReadError, TimeoutError) as exc:
                problems.append(f"{name}: no error event, the socket failed: {exc!r}")
                ws.close()
                ws = await fresh()  # go on with the other cases on a new socket
                continue
            if event["event"] != "error" or not event.get("detail"):
                problems.append(f"{name}: expected an error event, got {event}")
                continue
            ws.send(1, b'{"event": "ping"}')  # still usable?
            if (await ws.event())["event"] != "pong":
                problems.append(f"{name}: no pong after the error")
    finally:
        ws.close()
    assert not problems, "\n".join(problems)
    await _unaffected(bridge, http, watchers, before)


async def test_invalid_utf8_text_frame_fails_only_that_socket(frames_bridge) -> None:  # type: ignore[no-untyped-def]
    """RFC 6455 section 8.1: a text frame that is not UTF-8 MUST fail the connection, and
    1007 is the code for it. So this is the one malformed frame that closes its socket."""
    bridge, http, watchers, before = frames_bridge
    for payload in (b"\xff\xfe{", b'{"event": "message", "role": "user", "content": "\xc0\xae"}'):
        ws = await RawWs.open(bridge.port, "/api/v1/sessions/target/ws?after=2")
        try:
            await ws.live()
            ws.send(1, payload)
            code, _ = await ws.closed()
            assert code == 1007, (payload, code)
        finally:
            ws.close()
    await _unaffected(bridge, http, watchers, before)


async def test_unencodable_text_is_refused_and_harms_no_other_session(
    start_bridge: StartBridge,
) -> None:
    """JSON may spell a lone UTF-16 surrogate (`"\\ud800"`): valid JSON, valid UTF-8 on the
    wire, but no UTF-8 text can hold it. Sent as a WebSocket message or a streamed NDJSON
    delta it must be refused as bad input (an `error` event, a 4xx), be stored nowhere, and
    not fail anybody else's messages committed alongside it; meanwhile publishers on other
    sessions keep publishing, and every one of their POSTs must succeed."""
    bridge = start_bridge(store="sqlite")
    poison = b'{"event": "message", "role": "user", "content": "a\\ud800b"}'
    stop = asyncio.Event()
    statuses: Counter[int] = Counter()
    failures: list[str] = []
    async with httpx.AsyncClient(
        base_url=bridge.url, timeout=10, limits=httpx.Limits(max_connections=40)
    ) as http:

        async def bystander(n: int) -> None:
            i = 0
            while not stop.is_set():
                body = {"role": "user", "content": f"b{n}-{i}"}
                resp = await http.post(f"/api/v1/sessions/bystander-{n}/messages", json=body)
                statuses[resp.status_code] += 1
                if resp.status_code != 200 and len(failures) < 3:
                    failures.append(resp.text)
                i += 1

        tasks = [asyncio.create_task(bystander(n)) for n in range(24)]
        try:
            ws = await RawWs.open(bridge.port, "/api/v1/sessions/poisoned/ws")
            try:
                await ws.live()
                for _ in range(100):
                    ws.send(1, poison)
                    event = await ws.event()
                    assert event["event"] == "error", event
            finally:
                ws.close()
            stream = await http.post(
                "/api/v1/sessions/poisoned/messages/stream",
                content=b'{"delta": "a"}\n{"delta": "\\udfff"}\n',
                headers={"content-type": "application/x-ndjson"},
            )
        finally:
            stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks), 30)
        problems = []
        if set(statuses) != {200}:
            problems.append(f"other sessions' POSTs answered {dict(statuses)}: {failures}")
        if not 400 <= stream.status_code < 500:
            problems.append(
                f"NDJSON delta with a lone surrogate: {stream.status_code} {stream.text}"
            )
        assert not problems, "\n".join(problems)
        assert statuses[200] > 0
        poisoned = await _history(http, "poisoned")
        assert [m["seq"] for m in poisoned] == [1], poisoned  # only the welcome
    _no_crash(bridge)


async def test_malformed_ndjson_stream_is_4xx(bridge: RunningBridge) -> None:
    """The streamed route parses NDJSON lines itself: the same bad input must be a 4xx
    with a detail there too, nothing stored, and subscribers told `stream.abort`."""
    depth = 50_000
    bodies = {
        "not JSON": b"{not json\n",
        "nested": b"[" * depth + b"]" * depth + b"\n",
        "nested delta": b'{"delta": ' + b"[" * depth + b"]" * depth + b"}\n",
        "delta not text": b'{"delta": 1}\n',
    }
    async with httpx.AsyncClient(base_url=bridge.url, timeout=10) as http:
        async with ws_connect(bridge.ws_url, "ndjson") as ws:
            await recv_messages(ws, 1)  # the welcome
            for name, body in bodies.items():
                resp = await http.post(
                    "/api/v1/sessions/ndjson/messages/stream",
                    content=body,
                    headers={"content-type": "application/x-ndjson"},
                )
                assert 400 <= resp.status_code < 500, (name, resp.status_code, resp.text)
                assert resp.json()["detail"], name
                events = await recv_until(ws, lambda e: e["event"] == "stream.abort")
                kinds = [e["event"] for e in events if e["event"] != "presence"]
                assert kinds == ["stream.start", "stream.abort"], (name, events)
        assert [m["seq"] for m in await _history(http, "ndjson")] == [1]
    _no_crash(bridge)


# -- (d) session ids built to escape a path ---------------------------------------------

MARK = "pwn"  # in every attack id: a file named after one would contain it
EVIL_IDS = [
    f"..%2F..%2F{MARK}",
    "%2E%2E%2F%2E%2E%2Fetc%2Fpasswd",
    f"%2e%2e%2f%2e%2e%2f{MARK}",
    f"../../{MARK}",  # raw: clients normalise dot segments, a raw socket does not
    "%2E%2E",
    "%2E",
    "..",
    f"..%5C..%5C{MARK}",  # backslashes, encoded
    f"..\\..\\{MARK}",  # and raw
    f"{MARK}%00",
    f"%00..%2F{MARK}",
    f"{MARK}%00.db",
    f"%252e%252e%252f{MARK}",  # double-encoded
    f"%C0%AE%C0%AE%C0%AF{MARK}",  # overlong UTF-8 for ../ (invalid UTF-8)
    f"%EF%BC%8E%EF%BC%8E%EF%BC%8F{MARK}",  # fullwidth full stops and solidus, U+FF0E U+FF0F
    f"%E2%80%A5%E2%88%95{MARK}",  # two-dot leader, division slash
    f"..%E2%81%84{MARK}",  # fraction slash
    f"%2F{MARK}",  # absolute
    MARK + "x" * 10_240,  # 10 KB
    "..%2F" * 2_000 + MARK,  # 10 KB of ../
]
ROUTES = [
    ("POST", "/api/v1/sessions/{}", b"", ""),
    ("GET", "/api/v1/sessions/{}", b"", ""),
    ("DELETE", "/api/v1/sessions/{}", b"", ""),
    ("POST", "/api/v1/sessions/{}/token", b"", ""),
    ("GET", "/api/v1/sessions/{}/messages", b"", ""),
    ("POST", "/api/v1/sessions/{}/messages", b'{"role": "user", "content": "x"}', "json"),
    ("GET", "/api/v1/sessions/{}/messages/last", b"", ""),
    ("POST", "/api/v1/sessions/{}/messages/stream", b"streamed", "text/plain"),
    ("GET", "/api/v1/sessions/{}/listen?timeout=0", b"", ""),
]


def _filesystem(data: Path) -> dict[str, object]:
    """What an escaping id could change: the data folder's files (recursively), entries
    carrying the attack mark next to it, two levels up and in the bridge's working
    directory (ROOT, and its default data/), and /etc/passwd's modification time. Only
    marked names are compared outside the data folder: other tests and engineers create
    files there meanwhile."""

    def marked(folder: Path) -> list[str]:
        found = [p.name for p in folder.iterdir() if MARK in p.name or "passwd" in p.name]
        if (folder / "data").is_dir():
            found += [f"data/{p.name}" for p in (folder / "data").iterdir() if MARK in p.name]
        return sorted(found)

    return {
        "data folder": sorted(str(p.relative_to(data)) for p in data.rglob("*")),
        **{str(d): marked(d) for d in (data.parent, data.parent.parent, ROOT)},
        "/etc/passwd": os.stat("/etc/passwd").st_mtime_ns,
    }


async def test_path_escaping_session_ids_are_refused_everywhere(
    start_bridge: StartBridge, tmp_path: Path
) -> None:
    """Every id of EVIL_IDS on every route with a session id, sent byte for byte: a 4xx
    with a `detail` (the WebSocket: a refused handshake or close 1007 with a reason), no
    session created or changed, no file created or opened outside the data folder."""
    bridge = start_bridge(store="sqlite")  # its data folder: tmp_path
    async with httpx.AsyncClient(base_url=bridge.url, timeout=10) as http:
        body = {"role": "user", "content": "kept"}
        assert (await http.post("/api/v1/sessions/keep/messages", json=body)).is_success
        kept = await _history(http, "keep")
        ids = (await http.get("/api/v1/sessions")).json()
        files = _filesystem(tmp_path)

        problems: list[str] = []
        for evil in EVIL_IDS:
            shown = evil if len(evil) < 40 else evil[:40] + "..."
            for method, template, payload, kind in ROUTES:
                ctype = "application/json" if kind == "json" else kind
                resp = await raw_http(
                    bridge.port, method, template.format(evil), payload, content_type=ctype
                )
                if not 400 <= resp.status < 500:
                    problems.append(f"{method} {template} {shown}: {resp.status}")
                elif not resp.detail():
                    problems.append(f"{method} {template} {shown}: no detail {resp.body[:80]!r}")
            try:
                ws = await RawWs.open(bridge.port, f"/api/v1/sessions/{evil}/ws", timeout=5)
            except TimeoutError:
                problems.append(f"WS {shown}: no answer to the handshake within 5 s")
                continue
            try:
                # Either the handshake is refused (a path no route matches: a browser shows
                # no body of a failed handshake anyway) or the socket is closed with a reason.
                if ws.status == 101:
                    code, reason = await ws.closed()
                    if code != 1007 or not reason:
                        problems.append(f"WS {shown}: closed {code} {reason!r}")
                elif not 400 <= ws.status < 500:
                    problems.append(f"WS {shown}: handshake answered {ws.status}")
            finally:
                ws.close()
        # What the attempts must not have changed, checked even if some answer was wrong.
        if (await http.get("/api/v1/sessions")).json() != ids:
            problems.append(f"sessions changed: {(await http.get('/api/v1/sessions')).json()}")
        if await _history(http, "keep") != kept:
            problems.append("session keep changed")
    if _filesystem(tmp_path) != files:
        problems.append(f"files changed: {files} -> {_filesystem(tmp_path)}")
    # What the bridge has open: only files inside its data folder (the database, its WAL
    # and shared memory, its log): no id ever became a path.
    assert bridge.proc is not None
    opened = [f.path for f in psutil.Process(bridge.proc.pid).open_files()]
    if not all(Path(p).is_relative_to(tmp_path) for p in opened):
        problems.append(f"the bridge has files open outside its data folder: {opened}")
    assert not problems, "\n".join(problems)
    _no_crash(bridge)
