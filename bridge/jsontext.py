"""The one JSON text form the bridge writes: compact, UTF-8 as is (no \\u escapes)."""

from __future__ import annotations

import json

__all__ = ["dumps"]

dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
"""`dumps(obj) -> str`, for HTTP bodies and WebSocket frames alike."""
