"""Writing frames to one WebSocket without a task per frame, with a bounded backlog.

The fan-out loop calls `Outbox.put(frame)` for every subscriber. While a socket keeps up,
the ASGI send completes without suspending (the server only suspends it when the
transport's write buffer is over its high-water mark), so `put` runs the send coroutine's
first step inline: no task, no queue, the cost of a plain send loop. Only when a send does
suspend does the outbox start one drain task that finishes it and then empties the
backlog; frames put meanwhile wait there. A backlog over its frame or byte bound marks
the outbox overflowed: the hub then closes that socket with 4000 and the rest of the
session is never held up by it (a plain `await send` loop would stall every subscriber
behind the slowest).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any

__all__ = ["Outbox", "OutboxClosed"]

SendCoroutine = Coroutine[Any, Any, None]
Message = dict[str, Any]
"""An ASGI `websocket.send` message: `{"type": "websocket.send", "text": frame}`."""


class OutboxClosed(ConnectionError):
    """`Outbox.send` on an outbox that was closed (its socket was kicked or failed)."""


class Outbox:
    """The outgoing side of one subscriber's socket."""

    __slots__ = (
        "_backlog",
        "_backlog_bytes",
        "_drainer",
        "_max_bytes",
        "_max_frames",
        "_send",
        "closed",
        "overflowed",
    )

    def __init__(
        self, send: Callable[[Message], SendCoroutine], *, max_frames: int, max_bytes: int
    ) -> None:
        self._send = send
        self._max_frames = max_frames
        self._max_bytes = max_bytes
        # Created on the first backlog only: an idle socket should cost as little as possible.
        self._backlog: deque[Message] | None = None
        self._backlog_bytes = 0
        self._drainer: asyncio.Task[None] | None = None
        self.closed = False
        self.overflowed = False

    @property
    def backlog(self) -> int:
        """Frames waiting for the socket."""
        return len(self._backlog) if self._backlog is not None else 0

    def put(self, message: Message) -> bool:
        """Write or queue `message`. False if the outbox is closed or has just overflowed."""
        if self.closed:
            return False
        if self._drainer is not None:
            backlog = self._backlog
            if backlog is None:
                backlog = self._backlog = deque()
            size = len(message["text"])
            if len(backlog) >= self._max_frames or self._backlog_bytes + size > self._max_bytes:
                self.overflowed = self.closed = True
                self._backlog = None
                self._backlog_bytes = 0
                return False
            backlog.append(message)
            self._backlog_bytes += size
            return True
        coro = self._send(message)
        try:
            blocker = coro.send(None)
        except StopIteration:
            return True
        except Exception:
            # The socket is gone; its receive loop sees the disconnect and unsubscribes.
            self.closed = True
            return False
        self._drainer = asyncio.get_running_loop().create_task(self._drain(coro, blocker))
        return True

    async def send(self, message: Message) -> None:
        """Write `message` waiting for the socket (history replay, before going live).

        Raises `OutboxClosed` once the outbox is closed: after a kick the socket's close
        frame may already be out, and nothing may follow it."""
        if self._drainer is not None:
            await asyncio.shield(self._drainer)
        if self.closed:
            raise OutboxClosed("the socket was closed")
        await self._send(message)

    async def aclose(self) -> None:
        """Stop writing; drop the backlog."""
        self.closed = True
        self._backlog = None
        if self._drainer is not None:
            self._drainer.cancel()
            await asyncio.gather(self._drainer, return_exceptions=True)

    async def _drain(self, coro: SendCoroutine, blocker: Any) -> None:
        try:
            await _finish(coro, blocker)
            while self._backlog and not self.closed:
                message = self._backlog.popleft()
                self._backlog_bytes -= len(message["text"])
                await self._send(message)
            self._backlog = None
        except Exception:
            self.closed = True
        finally:
            self._drainer = None


async def _finish(coro: SendCoroutine, blocker: Any) -> None:
    """Run to its end a coroutine whose first step, run inline, suspended on `blocker`.

    This is what an asyncio Task does on each step, done by hand because the first step
    already ran outside any task (Python 3.12's eager tasks do the same thing).
    """
    try:
        while True:
            try:
                if blocker is None:  # a bare yield, as in asyncio.sleep(0)
                    await asyncio.sleep(0)
                else:
                    # A Task clears this flag when it takes over a yielded future;
                    # awaiting one that still has it set is refused as misuse.
                    blocker._asyncio_future_blocking = False
                    await blocker
            except BaseException as exc:  # hand cancellation and errors to the coroutine
                blocker = coro.throw(exc)
            else:
                blocker = coro.send(None)
    except StopIteration:
        return
    finally:
        coro.close()
