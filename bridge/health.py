"""Liveness, readiness and Prometheus metrics, at the root (not under /api/v1)."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute

from bridge.errors import StorageUnavailable
from bridge.metrics import Metrics
from bridge.responses import json_response
from bridge.schemas import ERRORS, ErrorBody
from bridge.service import BridgeService

__all__ = ["routes"]

_ERROR_BODY = "#/components/schemas/ErrorBody"


def routes(service: BridgeService, app_metrics: Metrics) -> list[BaseRoute]:
    """`/healthz`, `/readyz` and `/metrics`, built once per app."""
    # The browser guard answers these too: a foreign Origin or Sec-Fetch-Site (403), a
    # Host not served (421). The API key does not apply here (no 401).
    router = APIRouter(responses={code: ERRORS[code] for code in (403, 421)})

    @router.get("/healthz", summary="The process answers")
    async def healthz() -> Response:
        return json_response({"status": "ok"})

    @router.get(
        "/readyz",
        summary="Storage is reachable",
        responses={503: {"description": "storage unavailable", "model": ErrorBody}},
    )
    async def readyz() -> Response:
        try:
            store = await service.ready()
        except StorageUnavailable as exc:
            return json_response({"detail": f"storage unavailable: {exc.detail}"}, 503)
        return json_response({"status": "ready", "store": store})

    @router.get(
        "/metrics",
        summary="Prometheus text format",
        response_class=PlainTextResponse,
        # The route's media type is text/plain, which FastAPI would give its refusals
        # too: they are JSON (ErrorBody, declared in the schema by the other routes).
        responses={
            code: {
                "description": ERRORS[code]["description"],
                "content": {"application/json": {"schema": {"$ref": _ERROR_BODY}}},
            }
            for code in (403, 421)
        },
    )
    async def metrics() -> Response:  # the name is the OpenAPI operation's
        return Response(app_metrics.render(), media_type="text/plain; version=0.0.4")

    return list(router.routes)
