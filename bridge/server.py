"""Running the app under uvicorn, with the bridge's shutdown order."""

from __future__ import annotations

import gc
import logging
import re
import socket

import uvicorn
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from bridge.app import CLOSE_GOING_AWAY, create_app
from bridge.service import BridgeService
from bridge.settings import Settings

__all__ = ["GC_THRESHOLDS", "serve"]

log = logging.getLogger("bridge")

GC_THRESHOLDS = (10_000, 20, 20)
"""Python's cyclic collector runs a young collection every 700 new container objects.
Under load, the requests in flight keep a few thousand young objects alive, and every
young collection walks them again: that was the largest single cost of a POST (about a
sixth of the server's CPU in `perf`). Almost everything the bridge allocates is freed by
reference counting, so collecting 14x less often holds back little memory (at most
10,000 objects of cyclic garbage) and takes 20-25% off the CPU per POST
(docs/benchmarks.md)."""


class _WebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol, answering handshakes it cannot parse.

    When the request line or headers are too long (a 10 KB session id, say), the
    `websockets` parser queues a 414/431 response but no request event, and uvicorn 0.54
    never writes it: the client hangs until its own timeout. Here the queued answer is
    sent and the connection closed.
    """

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if not self.handshake_complete and self.conn.handshake_exc is not None:
            self.transport.write(b"".join(self.conn.data_to_send()))
            self.handshake_complete = True
            self.transport.close()


class _RedactTokens(logging.Filter):
    """uvicorn logs each WebSocket's path with its query string: keep tokens out of logs."""

    _TOKEN = re.compile(r"(token=)[^&\s\"']+")

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and record.args:
            record.args = tuple(
                self._TOKEN.sub(r"\1[redacted]", a) if isinstance(a, str) else a
                for a in record.args
            )
        return True


class _BridgeServer(uvicorn.Server):
    """uvicorn would close every WebSocket with 1012 on SIGTERM; the protocol promises
    1001 ("reconnect with after"), so subscribers are closed first, then uvicorn lets
    in-flight requests (and so their commits) finish before the lifespan closes storage."""

    def __init__(self, config: uvicorn.Config, service: BridgeService) -> None:
        super().__init__(config)
        self._service = service

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._service.stop_listening()
        await self._service.hub.close_all(CLOSE_GOING_AWAY, "bridge shutting down")
        await super().shutdown(sockets)


def serve(settings: Settings, *, access_log: bool = False) -> None:
    """Serve the bridge until SIGINT or SIGTERM."""
    logging.basicConfig(level=settings.log_level.upper(), format="%(levelname)s: %(message)s")
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        ws=_WebSocketProtocol,
        ws_max_size=settings.max_frame_bytes,
        ws_ping_interval=settings.ping_interval_s or None,
        ws_ping_timeout=settings.ping_timeout_s or None,
        # Compression costs ~30 KiB per socket and CPU per frame; chat text is small.
        ws_per_message_deflate=False,
        log_level=settings.log_level,
        access_log=access_log,
        timeout_graceful_shutdown=10,
    )
    scheme_host = f"[{settings.host}]" if ":" in settings.host else settings.host
    log.info(
        "streamlit-bridge on http://%s:%d (store %s; API key %s)",
        scheme_host,
        settings.port,
        app.state.service.storage.url,
        "on" if settings.api_key else "off",
    )
    server = _BridgeServer(config, app.state.service)
    logging.getLogger("uvicorn.error").addFilter(_RedactTokens())
    _tune_gc()
    server.run()


def _tune_gc() -> None:
    # Modules, the app and its settings live as long as the process: frozen, the collector
    # never walks them again.
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
