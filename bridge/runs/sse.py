"""Server-Sent Events: the `data` of each event of a byte stream, within a bound."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

__all__ = ["EventTooLarge", "sse_data"]


class EventTooLarge(Exception):
    """An event (or one line) went past the bound before it ended."""


async def sse_data(chunks: AsyncIterator[bytes], max_bytes: int) -> AsyncIterator[str]:
    """The data of each event of the SSE byte stream `chunks`: the `data:` lines of one
    event joined with newlines, yielded at the blank line that ends it. Comments and
    other fields (`id`, `event`, `retry`) are skipped. Lines end with LF or CRLF (a lone
    CR, which SSE also allows, is not seen in the servers this talks to).

    Raise `EventTooLarge` once one event's data, or one unfinished line, passes
    `max_bytes`: a peer that never ends a line or an event cannot grow this without
    bound (httpx's own line reader would)."""
    event = _Event(max_bytes)
    pending = b""
    async for chunk in chunks:
        pending += chunk
        *lines, pending = pending.split(b"\n")
        if len(pending) > max_bytes:
            raise EventTooLarge(f"a line of more than {max_bytes} bytes")
        for line in lines:
            data = event.feed(line.removesuffix(b"\r").decode("utf-8", "replace"))
            if data is not None:
                yield data
    for data in event.finish(pending.removesuffix(b"\r").decode("utf-8", "replace")):
        yield data


class _Event:
    """The data lines of the event being read."""

    __slots__ = ("max_bytes", "parts", "size")

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.parts: list[str] = []
        self.size = 0

    def feed(self, line: str) -> str | None:
        """Take one line; the event's data when `line` is the blank line ending it."""
        if not line:
            if not self.parts:
                return None
            data = "\n".join(self.parts)
            self.parts.clear()
            self.size = 0
            return data
        name, _, value = line.partition(":")
        if name != "data":  # a comment (empty name) or another field
            return None
        if value.startswith(" "):
            value = value[1:]
        self.size += len(value) + 1
        if self.size > self.max_bytes:
            raise EventTooLarge(f"an event of more than {self.max_bytes} bytes")
        self.parts.append(value)
        return None

    def finish(self, rest: str) -> Iterator[str]:
        """The stream ended: what its last, unterminated event held."""
        if rest:
            self.feed(rest)
        if self.parts:
            yield "\n".join(self.parts)
