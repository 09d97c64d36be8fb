"""Text chunks from a streamed request body: plain UTF-8 text or NDJSON `{"delta": ...}`."""

from __future__ import annotations

import codecs
import json
from collections.abc import AsyncIterator

from bridge.errors import InvalidInput
from bridge.models import check_text

__all__ = ["decode_chunks"]


def _delta(line: str) -> str:
    try:
        data = json.loads(line)
    except ValueError as exc:
        raise InvalidInput(f"stream line is not JSON: {exc}") from None
    except RecursionError:
        raise InvalidInput("stream line is nested too deeply") from None
    if not isinstance(data, dict) or not isinstance(data.get("delta"), str):
        raise InvalidInput('each stream line must be a JSON object {"delta": "..."}')
    try:
        return check_text(data["delta"])
    except ValueError as exc:
        raise InvalidInput(f"stream delta is {exc}") from None


async def decode_chunks(raw: AsyncIterator[bytes], *, ndjson: bool) -> AsyncIterator[str]:
    """Yield text as it arrives. UTF-8 sequences split across network chunks are joined;
    with `ndjson`, each complete line yields its `delta`."""
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    buffer = ""
    try:
        async for piece in raw:
            text = decoder.decode(piece)
            if not ndjson:
                if text:
                    yield text
                continue
            buffer += text
            *lines, buffer = buffer.split("\n")
            for line in lines:
                if line.strip():
                    yield _delta(line)
        tail = decoder.decode(b"", final=True)
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"stream body is not UTF-8: {exc.reason}") from None
    buffer += tail
    if buffer.strip() if ndjson else buffer:
        yield _delta(buffer) if ndjson else buffer
