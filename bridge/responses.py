"""JSON answers, serialised once with a compact encoder (no per-field re-encoding)."""

from __future__ import annotations

import json
from typing import Any

from starlette.responses import Response

__all__ = ["json_response", "no_content"]

_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A `Response` whose body is `data` as JSON."""
    return Response(_encode(data), status, headers, media_type="application/json")


def no_content() -> Response:
    """204: used only where the documented API answers it (a Listen that timed out)."""
    return Response(status_code=204)
