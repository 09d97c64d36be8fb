"""Liveness, readiness and Prometheus metrics, at the root (not under /api/v1)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import PlainTextResponse, Response

from bridge.errors import StorageUnavailable
from bridge.responses import json_response
from bridge.schemas import ErrorBody
from bridge.service import BridgeService

__all__ = ["router"]

router = APIRouter()


@router.get("/healthz", summary="The process answers")
async def healthz() -> Response:
    return json_response({"status": "ok"})


@router.get(
    "/readyz",
    summary="Storage is reachable",
    responses={503: {"description": "storage unavailable", "model": ErrorBody}},
)
async def readyz(request: Request) -> Response:
    service: BridgeService = request.app.state.service
    try:
        await service.storage.ping()
    except StorageUnavailable as exc:
        return json_response({"detail": f"storage unavailable: {exc.detail}"}, 503)
    return json_response({"status": "ready", "store": service.storage.url})


@router.get("/metrics", summary="Prometheus text format", response_class=PlainTextResponse)
async def metrics(request: Request) -> Response:
    service: BridgeService = request.app.state.service
    return Response(service.metrics.render(), media_type="text/plain; version=0.0.4")
