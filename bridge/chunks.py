"""Text chunks from a streamed request body: plain UTF-8 text or NDJSON `{"delta": ...}`.

Both are bounded as they arrive: a plain-text chunk is passed on at once (the service
counts the reply's size), and an NDJSON line is refused as soon as its unfinished part
exceeds `max_line` characters, so that a body with no newline is never buffered whole.
Each piece of text is scanned for newlines once: the pending line is kept as a list of
parts, not re-joined and re-split on every network chunk (which is quadratic).
"""

from __future__ import annotations

import codecs
import json
from collections.abc import AsyncIterator

from bridge.errors import InvalidInput, PayloadTooLarge
from bridge.models import check_text

__all__ = ["decode_chunks", "ndjson_line_limit"]


def ndjson_line_limit(max_message_bytes: int) -> int:
    """The longest NDJSON line a reply within `max_message_bytes` can need: JSON escaping
    at most multiplies text by 6 (`\\uXXXX`), plus room for the object around it."""
    return max_message_bytes * 6 + 4096


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


class _Lines:
    """The NDJSON side: complete lines out of text pieces, the unfinished line bounded."""

    __slots__ = ("_max", "_parts", "_size")

    def __init__(self, max_line: int) -> None:
        self._max = max_line
        self._parts: list[str] = []
        self._size = 0

    def feed(self, text: str) -> list[str]:
        """The lines that `text` completes (newline dropped); keeps the rest pending."""
        lines: list[str] = []
        start = 0
        while (end := text.find("\n", start)) >= 0:
            self._keep(text, start, end)
            lines.append("".join(self._parts))
            self._parts.clear()
            self._size = 0
            start = end + 1
        if start < len(text):
            self._keep(text, start, len(text))
        return lines

    def rest(self) -> str:
        """The unfinished last line (a body need not end with a newline)."""
        return "".join(self._parts)

    def _keep(self, text: str, start: int, end: int) -> None:
        self._size += end - start
        if self._size > self._max:
            raise PayloadTooLarge(
                f"stream line exceeds {self._max} characters without a newline: "
                'send one {"delta": ...} object per line'
            )
        if end > start:
            self._parts.append(text[start:end])


async def decode_chunks(
    raw: AsyncIterator[bytes], *, ndjson: bool, max_line: int
) -> AsyncIterator[str]:
    """Yield text as it arrives. UTF-8 sequences split across network chunks are joined;
    with `ndjson`, each complete line yields its `delta`; a line longer than `max_line`
    characters is refused (`PayloadTooLarge`) as soon as that is known."""
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    lines = _Lines(max_line) if ndjson else None
    try:
        async for piece in raw:
            text = decoder.decode(piece)
            if lines is None:
                if text:
                    yield text
                continue
            for line in lines.feed(text):
                if line.strip():
                    yield _delta(line)
        tail = decoder.decode(b"", final=True)
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"stream body is not UTF-8: {exc.reason}") from None
    if lines is None:
        if tail:
            yield tail
        return
    for line in lines.feed(tail):
        if line.strip():
            yield _delta(line)
    last = lines.rest()
    if last.strip():
        yield _delta(last)
