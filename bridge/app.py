"""`create_app(settings)`: the one place where the bridge's objects are wired together.

Every route is built here once, as a closure (or endpoint object) over the parts it
needs: the service for the use cases, `Auth` for tokens, the rate limiter, the metrics.
`app.state.service` is kept for `server.py` (the shutdown order) and nothing else."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.responses import Response

from bridge import api, health, ws
from bridge.auth import Auth
from bridge.broker import open_backend
from bridge.errors import BridgeError, RateLimited
from bridge.guard import BrowserGuard
from bridge.hub import Hub
from bridge.metrics import Metrics
from bridge.ratelimit import RateLimiter
from bridge.responses import json_response
from bridge.runs import Runner, source_for
from bridge.service import BridgeService
from bridge.settings import Settings

__all__ = ["create_app"]

log = logging.getLogger("bridge")


def create_app(settings: Settings) -> FastAPI:
    """Build the ASGI app; storage opens and closes with the app's lifespan."""
    metrics = Metrics()
    backend = open_backend(settings.store, settings)
    storage, broker = backend.storage, backend.broker
    auth = Auth(settings.api_key, settings.allowed_origins, settings.token_ttl_s)
    hub = Hub(
        metrics=metrics,
        buffer_frames=settings.subscriber_buffer,
        buffer_bytes=settings.subscriber_buffer_bytes,
        # A session token names a session: once that session is deleted, its sockets end.
        close_on_reset=auth.enabled,
    )
    service = BridgeService(settings, storage, broker, hub, metrics)
    limiter = RateLimiter(settings.rate_limit_per_s, settings.rate_limit_burst)
    source = source_for(settings)
    runner = Runner(service, source, settings, metrics) if source is not None else None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await storage.open()
        try:
            if auth.enabled:
                # Tokens are signed with a key derived from this secret and the API key:
                # BRIDGE_TOKEN_SECRET, else the store's own random one (kept across
                # restarts, shared by every instance on the store).
                secret = settings.token_secret
                auth.start(secret.encode() if secret else await storage.token_secret())
            await service.start()
            if runner is not None:
                await runner.start()
            yield
        finally:
            if runner is not None:
                await runner.stop()
            await service.stop()
            await broker.close()
            await storage.close()

    # Routes go straight onto the app: FastAPI 0.165 keeps each included router as a
    # wrapper searched on every request (about 30 us of a POST's ~175 us).
    app = FastAPI(
        title="streamlit-bridge",
        version="0.1.0",
        summary="The documented Langflow 'Streamlit API' plus a WebSocket hub keyed by session.",
        lifespan=lifespan,
        routes=[
            *api.routes(service, auth, limiter),
            *health.routes(service, metrics),
            *ws.routes(service, auth, limiter),
        ],
        # The bridge exports its own Prometheus metrics; FastAPI's OpenTelemetry hooks
        # would look up providers on every request (~12 us of a ~100 us POST).
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.service = service
    app.add_middleware(
        BrowserGuard,
        auth=auth,
        allowed_origins=settings.allowed_origins,
        allowed_hosts=settings.effective_allowed_hosts,
    )
    app.add_exception_handler(BridgeError, _bridge_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    return app


async def _bridge_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BridgeError)
    headers = None
    if isinstance(exc, RateLimited):
        headers = {"Retry-After": str(max(1, round(exc.retry_after)))}
    if exc.status >= 500:
        log.warning("%s %s: %s", request.method, request.url.path, exc.detail)
    if exc.ends_upload:
        # The streamed body may still be coming and is of no use: close after the answer,
        # so that a producer that reads only once it has sent everything fails at its
        # next write. (Not for 413/422/408: uvicorn reads the rest and the sender gets
        # its answer; closing with unread data would reset the connection first.)
        headers = {**(headers or {}), "connection": "close"}
    return json_response({"detail": exc.detail}, exc.status, headers)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ())) or "request"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return json_response({"detail": "; ".join(parts)}, 422)
