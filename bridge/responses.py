"""JSON answers, serialised once with a compact encoder (no per-field re-encoding)."""

from __future__ import annotations

from typing import Any

from starlette.responses import Response

from bridge.jsontext import dumps

__all__ = ["json_response", "json_text_response", "no_content"]


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A `Response` whose body is `data` as JSON."""
    return json_text_response(dumps(data), status, headers)


def json_text_response(
    text: str, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """A `Response` whose body is `text`, already JSON."""
    return Response(text, status, headers, media_type="application/json")


def no_content() -> Response:
    """204: used only where the documented API answers it (a Listen that timed out)."""
    return Response(status_code=204)
