"""Running the app under uvicorn, with the bridge's shutdown order and socket bounds."""

from __future__ import annotations

import asyncio
import gc
import logging
import re
import socket
import struct
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import unquote_plus

import uvicorn
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.protocol import OPEN

if TYPE_CHECKING:
    from uvicorn._types import ASGISendEvent

from bridge.app import create_app
from bridge.service import BridgeService
from bridge.settings import Settings

__all__ = ["GC_THRESHOLDS", "BridgeServer", "build_server", "serve", "text_frame"]

log = logging.getLogger("bridge")

GC_THRESHOLDS = (10_000, 20, 20)
"""Python's cyclic collector runs a young collection every 700 new container objects.
Under load, the requests in flight keep a few thousand young objects alive, and every
young collection walks them again: that was the largest single cost of a POST (about a
sixth of the server's CPU in `perf`). Almost everything the bridge allocates is freed by
reference counting, so collecting 14x less often holds back little memory (at most
10,000 objects of cyclic garbage) and takes 20-25% off the CPU per POST
(docs/benchmarks.md)."""


class _WriteGate(asyncio.Event):
    """`protocol.writable` with a deadline: set while the transport takes more data.

    uvicorn's `send` awaits `writable.wait()` before every write. While the socket keeps
    up that returns at once, as before (no timer per frame); once the transport paused
    writing (its buffer is over the high-water mark), a write that cannot go out within
    `send_timeout_s` aborts the connection instead of waiting forever for a peer that
    stopped reading. The abort makes uvicorn report the disconnect (and set this gate, so
    the waiting send raises), the app unsubscribes and the file descriptor is released.
    A history replay, the outbox's writes and the close frame of a kick all wait here.

    The deadline is a loop timer, not `asyncio.timeout`: that one cancels the task that
    entered it, and a live write is begun inline by whichever task publishes (the
    outbox runs a send's first step without a task of its own); it would have cancelled
    the publisher (the Redis broker's reader, say) and left the write waiting.
    """

    __slots__ = ("_timeout", "transport")

    def __init__(self, timeout: float) -> None:
        super().__init__()
        self._timeout = timeout
        # Set by connection_made; asyncio drops its own reference to the protocol when the
        # connection is lost, so this adds no lasting cycle.
        self.transport: asyncio.Transport | None = None
        self.set()

    async def wait(self) -> Literal[True]:
        """Return once writable; abort the connection after `send_timeout_s` of waiting."""
        if self.is_set():
            return True
        timer = asyncio.get_running_loop().call_later(self._timeout, self._expired)
        try:
            return await super().wait()
        finally:
            timer.cancel()

    def _expired(self) -> None:
        if self.is_set():
            return
        if self.transport is not None:
            # uvicorn's connection_lost follows, which sets this gate: the waiting send
            # then finds the connection gone and raises ClientDisconnected.
            self.transport.abort()
        else:
            self.set()  # nothing to abort: let the send find out for itself


class _WebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol, with bounds on a peer that stops reading.

    - Handshakes it cannot parse are answered: when the request line or headers are too
      long (a 10 KB session id, say), the `websockets` parser queues a 414/431 response but
      no request event, and uvicorn 0.54 never writes it; the client would hang until its
      own timeout. Here the queued answer is sent and the connection closed.
    - uvicorn ends a connection with `transport.close()`, which waits until the write buffer
      has drained: forever, if the peer stopped reading, and the file descriptor, the
      buffer and (after a heartbeat timeout) the subscription stay. Here writes wait at
      most `send_timeout` (`_WriteGate`), a heartbeat timeout aborts a connection that
      still has unsent data, and once the app is done with a socket its closing handshake
      gets `send_timeout` before the connection is aborted.

    - A text frame to an open socket that takes data is written in one step: see `send`.

    `send_timeout` is set per server by `_protocol_class`.
    """

    send_timeout: float = 10.0
    # The last text `send` framed and its frame, shared by this server's sockets: fan-out
    # hands every subscriber the same text object. One tuple, replaced whole.
    _framed: tuple[str, bytes] = ("", b"")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.writable: _WriteGate = _WriteGate(self.send_timeout)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.writable.transport = self.transport

    async def send(self, message: ASGISendEvent) -> None:
        """uvicorn's `send`, with a shortcut for what fan-out sends: a text frame to an
        open socket whose transport takes data (the write gate is set).

        uvicorn would wait on the gate, have `websockets` build a `Frame`, check and
        serialise it, queue the bytes and hand them back: about 60% of the bridge's own
        CPU per delivery (`python -m bench.fanout_cost --profile`). Here the frame of each
        text is built once for all sockets (unmasked, no extension: the server offers
        none) and written directly. Anything else (handshake, binary, close, a paused
        transport, a closing or failed connection) goes through uvicorn unchanged.
        """
        if message["type"] == "websocket.send":
            text = message.get("text")
            conn = self.conn
            if (
                text is not None
                and message.get("bytes") is None
                and self.writable.is_set()
                and self.handshake_complete
                and not self.close_sent
                and not self.disconnected
                and self.initial_response is None
                and conn.state is OPEN
                and not conn.expect_continuation_frame
                and not conn.extensions
                and not conn.writes  # nothing of websockets' own waits to go first
            ):
                framed = self._framed
                if framed[0] is not text:
                    framed = type(self)._framed = (text, text_frame(text))
                self.transport.write(framed[1])
                return
        await super().send(message)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if not self.handshake_complete and self.conn.handshake_exc is not None:
            self.transport.write(b"".join(self.conn.data_to_send()))
            self.handshake_complete = True
            self.transport.close()

    def keepalive_timeout(self) -> None:
        # uvicorn writes a close frame and calls transport.close(); with data still queued
        # for a peer that answers no ping, that close would never complete.
        super().keepalive_timeout()
        self._finish()

    def on_task_complete(self, task: asyncio.Task[None]) -> None:
        # The app's task (`run_asgi`) is done. A hook rather than an override of run_asgi:
        # wrapping that coroutine would keep a second frame alive per idle socket.
        super().on_task_complete(task)
        if self.disconnected:
            return
        # The app is done: uvicorn closed the transport or armed a 10 s timer to, and
        # either waits for the write buffer to drain. Give the peer send_timeout to answer
        # the close, then abort. (`close_timer` is also what handle_close cancels when
        # the peer's close frame arrives, closing the transport at once.)
        if self.close_timer is not None:
            self.close_timer.cancel()
        self.close_timer = self.loop.call_later(self.send_timeout, self._finish)

    def _finish(self) -> None:
        """Close the transport now: gracefully if everything was written, else abort."""
        if self.disconnected:
            return
        if self.transport.get_write_buffer_size():
            self.transport.abort()
        else:
            self.transport.close()


def text_frame(text: str) -> bytes:
    """A server's WebSocket frame of `text`: FIN, opcode 1, unmasked, no extension
    (RFC 6455 section 5.2), byte for byte what `websockets` writes for `send_text`."""
    data = text.encode()
    size = len(data)
    if size < 126:
        return bytes((0x81, size)) + data
    if size < 65536:
        return struct.pack("!BBH", 0x81, 126, size) + data
    return struct.pack("!BBQ", 0x81, 127, size) + data


def _protocol_class(send_timeout: float) -> type[_WebSocketProtocol]:
    """The WebSocket protocol class for one server (uvicorn instantiates it per socket)."""

    class Protocol(_WebSocketProtocol):
        pass

    Protocol.send_timeout = send_timeout
    return Protocol


_QUERY_PARAM = re.compile(r"([?&;])([^=&;#\s\"']*)=([^&;#\s\"']*)")


def _redact_tokens(text: str) -> str:
    """`text` with the value of every query parameter whose decoded name is `token`
    replaced by `[redacted]`.

    Starlette decodes parameter names (`%74oken` is `token`), uvicorn logs the query as
    it came: matching the raw text `token=` would let an encoded name through."""

    def redact(match: re.Match[str]) -> str:
        if unquote_plus(match.group(2)) == "token":
            return f"{match.group(1)}{match.group(2)}=[redacted]"
        return match.group(0)

    return _QUERY_PARAM.sub(redact, text)


class _RedactTokens(logging.Filter):
    """uvicorn logs each WebSocket's path with its query string: keep tokens out of logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and record.args:
            record.args = tuple(_redact_tokens(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.msg, str) and "=" in record.msg:
            record.msg = _redact_tokens(record.msg)
        return True


class BridgeServer(uvicorn.Server):
    """uvicorn would close every WebSocket with 1012 on SIGTERM; the protocol promises
    1001 ("reconnect with after"), so subscribers are closed first, then uvicorn lets
    in-flight requests (and so their commits) finish before the lifespan closes storage."""

    def __init__(self, config: uvicorn.Config, service: BridgeService) -> None:
        super().__init__(config)
        self.service = service
        """The service of the app this server runs."""

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Close the bridge's sockets with 1001 and answer Listen calls, then uvicorn's
        shutdown (in-flight requests finish, then the lifespan closes storage)."""
        await self.service.shutdown()
        await super().shutdown(sockets)


def build_server(settings: Settings, *, access_log: bool = False) -> BridgeServer:
    """The bridge's app under a uvicorn server configured as `serve` runs it, not yet
    started: `serve` runs it in the main thread, the tests' in-process fixture in a
    thread of its own (`server.run(sockets=[...])`)."""
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        ws=_protocol_class(settings.send_timeout_s),
        ws_max_size=settings.max_frame_bytes,
        ws_ping_interval=settings.ping_interval_s or None,
        ws_ping_timeout=settings.ping_timeout_s or None,
        # Compression costs ~30 KiB per socket and CPU per frame; chat text is small.
        ws_per_message_deflate=False,
        log_level=settings.log_level,
        access_log=access_log,
        timeout_graceful_shutdown=10,
    )
    service: BridgeService = app.state.service
    return BridgeServer(config, service)


def serve(settings: Settings, *, access_log: bool = False) -> None:
    """Serve the bridge until SIGINT or SIGTERM."""
    logging.basicConfig(level=settings.log_level.upper(), format="%(levelname)s: %(message)s")
    server = build_server(settings, access_log=access_log)
    scheme_host = f"[{settings.host}]" if ":" in settings.host else settings.host
    log.info(
        "streamlit-bridge on http://%s:%d (store %s; API key %s)",
        scheme_host,
        settings.port,
        server.service.store_url,
        "on" if settings.api_key else "off",
    )
    for name in ("uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).addFilter(_RedactTokens())
    _tune_gc()
    server.run()


def _tune_gc() -> None:
    # Modules, the app and its settings live as long as the process: frozen, the collector
    # never walks them again.
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
