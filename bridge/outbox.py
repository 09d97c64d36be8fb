"""The one bounded buffer between the hub and one subscriber's socket.

An outbox starts *held*: while the subscriber's history replays (written by `send`, which
waits for the socket), live events are kept in order, at most `max_frames` frames and
`max_bytes` of frame text. `release` hands them back to the hub, which drops what the
replay already sent and puts the rest; from then on the outbox is live.

Live, `put` runs the ASGI send's first step inline: while a socket keeps up, the server
completes a send without suspending (it suspends only while the transport's write buffer
is over its high-water mark), so a delivery costs what a plain send loop costs: no task,
no queue. When a send does suspend, one writer task carries it on and then writes what was
queued meanwhile, and `put` queues until that queue is empty again. Held or live, a queue
that would pass its bounds marks the outbox overflowed: the hub then closes that socket
with 4000 (its client resumes later with `after`), and the rest of the session is never
held up by it (a plain `await send` loop would stall every subscriber behind the slowest).
"""

from __future__ import annotations

import asyncio
import types
from collections import deque
from collections.abc import Callable, Coroutine, Generator, Iterable
from typing import Any

from bridge.events import Event

__all__ = ["Message", "Outbox", "OutboxClosed", "Send"]

SendCoroutine = Coroutine[Any, Any, None]
Message = dict[str, Any]
"""An ASGI `websocket.send` message: `{"type": "websocket.send", "text": frame}`."""
Send = Callable[[Message], SendCoroutine]
"""The ASGI `send` of one WebSocket connection."""


class OutboxClosed(ConnectionError):
    """`Outbox.send` on an outbox that was closed (its socket was kicked or failed)."""


class Outbox:
    """The outgoing side of one subscriber's socket: inline writes, one bounded queue."""

    __slots__ = (
        "_max_bytes",
        "_max_frames",
        "_queue",
        "_queued_bytes",
        "_send",
        "_suspended",
        "_writer",
        "closed",
        "held",
        "overflowed",
    )

    def __init__(self, send: Send, *, max_frames: int, max_bytes: int) -> None:
        """`send` is the socket's ASGI send; `max_frames` and `max_bytes` bound the queue
        (`subscriber_buffer`, `subscriber_buffer_bytes`)."""
        self._send = send
        self._max_frames = max_frames
        self._max_bytes = max_bytes
        # A queue exists while held or while the writer task runs; None means "write
        # inline", which is every idle socket: it should cost as little as possible.
        self._queue: deque[Event] | None = deque()
        self._queued_bytes = 0
        self._writer: asyncio.Task[None] | None = None
        # The send that suspended in `put`, until the writer task takes it over.
        self._suspended: SendCoroutine | None = None
        self.held = True
        self.closed = False
        self.overflowed = False

    @property
    def queued(self) -> int:
        """Frames waiting in the queue."""
        return len(self._queue) if self._queue is not None else 0

    @property
    def queued_bytes(self) -> int:
        """Frame text waiting in the queue."""
        return self._queued_bytes

    def fits(self, event: Event) -> bool:
        """True if `event` can join the queue without passing its bounds."""
        return (
            self.queued < self._max_frames
            and self._queued_bytes + len(event.frame) <= self._max_bytes
        )

    def put(self, event: Event) -> bool:
        """Write or queue `event`. False if the outbox is closed or has just overflowed
        (then it is closed too, and `overflowed` says why)."""
        if self.closed:
            return False
        queue = self._queue
        if queue is not None:
            size = len(event.frame)
            if len(queue) >= self._max_frames or self._queued_bytes + size > self._max_bytes:
                self.overflowed = True
                self.stop()
                return False
            queue.append(event)
            self._queued_bytes += size
            return True
        coro = self._send(event.asgi)
        try:
            blocker = coro.send(None)
        except StopIteration:
            return True
        except Exception:
            # The socket is gone; its receive loop sees the disconnect and unsubscribes.
            self.closed = True
            return False
        self._queue = deque()
        self._suspended = coro
        self._writer = asyncio.get_running_loop().create_task(self._write(coro, blocker))
        return True

    async def send(self, event: Event) -> None:
        """Write `event` now, waiting for the socket, ahead of what is held: the hello
        and the history replay, before `release`.

        Raises `OutboxClosed` once the outbox is closed: after a kick the socket's close
        frame may already be out, and nothing may follow it."""
        if self.closed:
            raise OutboxClosed("the socket was closed")
        if not self.held:
            raise RuntimeError("Outbox.send is for the replay; after release, use put")
        await self._send(event.asgi)

    def release(self) -> Iterable[Event]:
        """Go live: return what was held, oldest first (the hub puts it again)."""
        held, self._queue = self._queue, None
        self._queued_bytes = 0
        self.held = False
        return held if held is not None else ()

    def stop(self) -> None:
        """Write nothing more and drop the queue; a frame being written finishes."""
        self.closed = True
        if self._queue is not None:
            self._queue.clear()
        self._queued_bytes = 0

    async def aclose(self) -> None:
        """Stop, and cancel a write still waiting for the socket."""
        self.stop()
        writer = self._writer
        if writer is None:
            return
        writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)
        suspended, self._suspended = self._suspended, None
        if suspended is not None:
            # Cancelled before its first step, the writer never took the send over: end
            # that send here, so that its own cleanup (`finally`) runs now.
            self._writer = None
            suspended.close()

    async def _write(self, coro: SendCoroutine, blocker: Any) -> None:
        """Finish the send that suspended, then write the queue until it is empty."""
        self._suspended = None
        queue = self._queue
        try:
            await _resume(coro, blocker)
            while queue and not self.closed:
                event = queue.popleft()
                self._queued_bytes -= len(event.frame)
                await self._send(event.asgi)
        except Exception:
            self.closed = True
        finally:
            self._writer = None
            if self._queue is queue:  # back to inline writes
                self._queue = None
                self._queued_bytes = 0


@types.coroutine
def _resume(coro: SendCoroutine, blocker: Any) -> Generator[Any, Any, None]:
    """Carry on a coroutine whose first step ran inline and yielded `blocker`.

    This is `await coro` entered after its first step: what the coroutine yields goes up
    to the task running this, as if the coroutine had run in it from the start, and what
    the task sends or throws goes back down (PEP 380's delegation, written out because
    `yield from` would begin with a step of its own)."""
    try:
        while True:
            try:
                sent = yield blocker
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # cancellation: the coroutine decides what to do
                blocker = coro.throw(exc)
            else:
                blocker = coro.send(sent)
    except StopIteration:
        return
