"""Minimal client halves of WebSocket (RFC 6455) and HTTP/1.1 keep-alive, as asyncio protocols.

Why not `websockets` and `httpx`: on a 2-core machine the load generator shares the CPU with
the server it measures. `httpx` spends more CPU per request than a FastAPI server spends
answering it, and a full WebSocket client costs several times what a raw frame reader does,
so with them the clients, not the servers, would set the numbers. These protocols do only
what the benchmark needs, on the same code path for every server measured:

- `WsClient`: opens `GET path` with an Upgrade, offers no extension (no permessage-deflate,
  like `compression=None`), hands each text frame's payload to a callback together with the
  time its bytes arrived, answers pings, and records the close code.
- `HttpConn`: one keep-alive connection, one request in flight, `Content-Length` or chunked
  answers.

Nothing here retries or reconnects: a benchmark must see failures, not hide them.
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
from collections.abc import Callable
from typing import cast

__all__ = ["HttpConn", "HttpError", "WsClient", "WsError", "open_http", "open_ws", "post_bytes"]

# Close code recorded when the TCP connection ends without a close frame (RFC 6455 7.1.5).
ABNORMAL_CLOSE = 1006
_OP_CONT, _OP_TEXT, _OP_BINARY, _OP_CLOSE, _OP_PING, _OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
# A handshake answer or HTTP header block larger than this is a broken server, not a slow one.
_MAX_HEAD = 64 * 1024

TextHandler = Callable[[bytes, float], None]


class WsError(Exception):
    """The WebSocket handshake failed (status other than 101, or the connection dropped)."""


class HttpError(Exception):
    """An HTTP exchange could not complete (connection lost, malformed answer)."""


def _masked_frame(opcode: int, payload: bytes) -> bytes:
    """Build one client frame; RFC 6455 requires every client frame to be masked."""
    key = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 1 << 16:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    # XOR with the repeated 4-byte key, done as one big integer operation (fast for any size).
    reps = key * (n // 4 + 1)
    body = (int.from_bytes(payload, "big") ^ int.from_bytes(reps[:n], "big")).to_bytes(n, "big")
    return head + key + body


class WsClient(asyncio.Protocol):
    """One WebSocket client connection; see the module docstring for what it does and doesn't.

    `opened` resolves when the server has answered 101; `hello` when the first text frame
    arrived (both servers send `hello` only once the subscriber is registered); `closed`
    resolves with the close code (1006 if the TCP connection simply ended).
    """

    def __init__(self, host: str, path: str, on_text: TextHandler) -> None:
        loop = asyncio.get_running_loop()
        self._host = host
        self._path = path
        self._on_text = on_text
        self._buf = b""
        self._handshaken = False
        self._fragments: list[bytes] = []
        self._transport: asyncio.Transport | None = None
        self.opened: asyncio.Future[None] = loop.create_future()
        self.hello: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[int] = loop.create_future()
        self.close_code: int | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Send the upgrade request as soon as TCP is up."""
        self._transport = cast(asyncio.Transport, transport)  # asyncio's own contract
        key = base64.b64encode(os.urandom(16)).decode()
        self._transport.write(
            (
                f"GET {self._path} HTTP/1.1\r\nHost: {self._host}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )

    def data_received(self, data: bytes) -> None:
        """Parse whatever arrived: the 101 answer first, then frames."""
        now = time.monotonic()  # receipt time of every frame in this chunk
        if self._buf:
            data = self._buf + data
            self._buf = b""
        if not self._handshaken:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                if len(data) > _MAX_HEAD:
                    self._fail(WsError("handshake answer too large"))
                self._buf = data
                return
            status_line = data[: data.find(b"\r\n")]
            if b" 101 " not in status_line + b" ":
                self._fail(WsError(f"handshake refused: {status_line.decode(errors='replace')}"))
                return
            self._handshaken = True
            self.opened.set_result(None)
            data = data[end + 4 :]
        self._parse_frames(data, now)

    def _parse_frames(self, data: bytes, now: float) -> None:
        """Split `data` into frames; server frames are never masked (RFC 6455 5.1)."""
        pos, n = 0, len(data)
        while n - pos >= 2:
            b0, b1 = data[pos], data[pos + 1] & 0x7F
            head = 2
            if b1 == 126:
                if n - pos < 4:
                    break
                b1 = int.from_bytes(data[pos + 2 : pos + 4], "big")
                head = 4
            elif b1 == 127:
                if n - pos < 10:
                    break
                b1 = int.from_bytes(data[pos + 2 : pos + 10], "big")
                head = 10
            end = pos + head + b1
            if end > n:
                break
            payload = data[pos + head : end]
            pos = end
            opcode = b0 & 0x0F
            if opcode in (_OP_TEXT, _OP_BINARY, _OP_CONT):
                if not b0 & 0x80:  # FIN unset: a fragment, keep until the last one
                    self._fragments.append(payload)
                    continue
                if self._fragments:
                    payload = b"".join([*self._fragments, payload])
                    self._fragments.clear()
                if not self.hello.done():
                    self.hello.set_result(None)
                self._on_text(payload, now)
            elif opcode == _OP_PING:
                self._send(_masked_frame(_OP_PONG, payload))
            elif opcode == _OP_CLOSE:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                self.close_code = code
                self._send(_masked_frame(_OP_CLOSE, payload[:2]))
                if self._transport is not None:
                    self._transport.close()
                return
        if pos < n:
            self._buf = data[pos:]

    def _send(self, frame: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(frame)

    def _fail(self, exc: Exception) -> None:
        for fut in (self.opened, self.hello):
            if not fut.done():
                fut.set_exception(exc)
                fut.exception()  # mark retrieved: a failure is reported by the caller's count
        if self._transport is not None:
            self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        """Record how the connection ended; wake anyone waiting on it."""
        if self.close_code is None:
            self.close_code = ABNORMAL_CLOSE
        self._fail(WsError(f"connection lost before hello (close code {self.close_code})"))
        if not self.closed.done():
            self.closed.set_result(self.close_code)

    def close(self, code: int = 1000) -> None:
        """Send a close frame and drop the TCP connection (the benchmark is done with it)."""
        if self._transport is None or self._transport.is_closing():
            return
        if self._handshaken:
            self._send(_masked_frame(_OP_CLOSE, code.to_bytes(2, "big")))
        self._transport.close()


async def open_ws(
    port: int, path: str, on_text: TextHandler, within: float = 20.0
) -> WsClient:
    """Connect to 127.0.0.1:`port`, upgrade `path`, wait for the first frame (`hello`).

    All of it within `within` seconds, else TimeoutError.
    """
    loop = asyncio.get_running_loop()
    host = f"127.0.0.1:{port}"
    async with asyncio.timeout(within):
        _, proto = await loop.create_connection(
            lambda: WsClient(host, path, on_text), "127.0.0.1", port
        )
        await proto.hello
    return proto


class HttpConn(asyncio.Protocol):
    """One HTTP/1.1 keep-alive connection with at most one request in flight."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._buf = b""
        self._waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport; requests are written by `request`."""
        self._transport = cast(asyncio.Transport, transport)  # asyncio's own contract

    def request(self, raw: bytes) -> asyncio.Future[tuple[int, bytes]]:
        """Write one complete request; the future resolves with (status, body)."""
        if self._transport is None or self.lost or self._waiter is not None:
            raise HttpError("connection not usable")
        self._waiter = asyncio.get_running_loop().create_future()
        self._transport.write(raw)
        return self._waiter

    def data_received(self, data: bytes) -> None:
        """Accumulate until one whole answer is in; a keep-alive answer has a known length."""
        self._buf += data
        if self._waiter is None:
            return
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buf) > _MAX_HEAD:
                self._finish(HttpError("header block too large"))
            return
        head = self._buf[:end].decode("latin-1")
        lines = head.split("\r\n")
        try:
            status = int(lines[0].split(" ", 2)[1])
        except (IndexError, ValueError):
            self._finish(HttpError(f"bad status line {lines[0]!r}"))
            return
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        body_start = end + 4
        if "content-length" in headers:
            size = int(headers["content-length"])
            if len(self._buf) - body_start < size:
                return
            body = self._buf[body_start : body_start + size]
            self._buf = self._buf[body_start + size :]
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            parsed = _dechunk(self._buf, body_start)
            if parsed is None:
                return
            body, rest = parsed
            self._buf = self._buf[rest:]
        else:  # no length: the answer ends with the connection (not keep-alive)
            return
        self._finish((status, body))

    def _finish(self, outcome: tuple[int, bytes] | Exception) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is None or waiter.done():
            return
        if isinstance(outcome, Exception):
            waiter.set_exception(outcome)
        else:
            waiter.set_result(outcome)

    def connection_lost(self, exc: Exception | None) -> None:
        """Fail the request in flight, if any; the connection is not reused."""
        self.lost = True
        self._finish(HttpError(f"connection lost: {exc!r}"))

    def close(self) -> None:
        """Close the connection."""
        if self._transport is not None:
            self._transport.close()


def _dechunk(buf: bytes, pos: int) -> tuple[bytes, int] | None:
    """Decode a chunked body starting at `pos`; None if incomplete; else (body, end)."""
    parts: list[bytes] = []
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        size = int(buf[pos:eol].split(b";")[0], 16)
        start = eol + 2
        if size == 0:
            trailer_end = buf.find(b"\r\n\r\n", eol)
            return (b"".join(parts), trailer_end + 4) if trailer_end >= 0 else None
        if len(buf) < start + size + 2:
            return None
        parts.append(buf[start : start + size])
        pos = start + size + 2


async def open_http(port: int, within: float = 10.0) -> HttpConn:
    """Open one keep-alive connection to 127.0.0.1:`port` (within `within` seconds)."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(within):
        _, proto = await loop.create_connection(HttpConn, "127.0.0.1", port)
    return proto


def post_bytes(port: int, path: str, body: bytes) -> bytes:
    """A complete keep-alive `POST path` request carrying a JSON body."""
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
