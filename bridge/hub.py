"""In-process fan-out keyed by session id. Knows nothing of HTTP or storage.

A subscriber joins in *pending* mode: live events are held (bounded) while its history is
replayed from storage, then `go_live` flushes them, skipping by `seq` what the replay
already sent. Every frame is serialised once per event (`Event.frame`) and written to
each socket through its `Outbox`, so one slow socket never holds up the others; one whose
backlog overflows is closed with 4000 and resumes later with `after`.

The hub also remembers the text so far of every streamed reply in progress, so that a
subscriber joining mid-stream starts with `stream.start` and one `stream.delta`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from bridge.events import ALL_SESSIONS, Event
from bridge.metrics import Metrics
from bridge.outbox import Outbox

__all__ = ["CLOSE_TOO_SLOW", "Hub", "Subscriber", "Subscription"]

CLOSE_TOO_SLOW = 4000
Closer = Callable[[int, str], Awaitable[None]]


class Subscriber:
    """One socket subscribed to one session."""

    __slots__ = ("close", "last_seq", "outbox", "pending", "session_id")

    def __init__(self, session_id: str, outbox: Outbox, close: Closer) -> None:
        self.session_id = session_id
        self.outbox = outbox
        self.close = close
        self.last_seq = 0
        self.pending: list[Event] | None = []


class Subscription:
    """The async context manager of `Hub.subscribe` (a class, not a generator: one of
    these lives as long as each socket, so it should be small)."""

    __slots__ = ("_hub", "_sub")

    def __init__(self, hub: Hub, sub: Subscriber) -> None:
        self._hub = hub
        self._sub = sub

    async def __aenter__(self) -> Subscriber:
        self._hub._join(self._sub)
        return self._sub

    async def __aexit__(self, *exc_info: object) -> None:
        await self._hub._leave(self._sub)


@dataclass
class _Stream:
    role: str
    text: list[str] = field(default_factory=list)


class Hub:
    """Subscribers and in-progress streams of every session served by this process."""

    def __init__(self, *, max_pending: int, metrics: Metrics) -> None:
        self._max_pending = max_pending
        self._metrics = metrics
        self._topics: dict[str, set[Subscriber]] = {}
        self._streams: dict[str, dict[str, _Stream]] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def count(self, session_id: str) -> int:
        """Subscribers of `session_id` on this process."""
        return len(self._topics.get(session_id, ()))

    @property
    def connections(self) -> int:
        """Subscribers of every session on this process."""
        return sum(len(subs) for subs in self._topics.values())

    def subscribe(self, session_id: str, outbox: Outbox, close: Closer) -> Subscription:
        """`async with hub.subscribe(...) as sub:` joins `session_id` in pending mode;
        leaving is certain, whatever happens inside."""
        return Subscription(self, Subscriber(session_id, outbox, close))

    def _join(self, sub: Subscriber) -> None:
        assert sub.pending is not None
        for stream_id, stream in self._streams.get(sub.session_id, {}).items():
            start = Event.of(sub.session_id, "stream.start", stream_id=stream_id, role=stream.role)
            text = "".join(stream.text)
            delta = Event.of(sub.session_id, "stream.delta", stream_id=stream_id, delta=text)
            sub.pending += (start, delta)
        self._topics.setdefault(sub.session_id, set()).add(sub)
        self._metrics.connections.inc()

    async def _leave(self, sub: Subscriber) -> None:
        self._remove(sub)
        await sub.outbox.aclose()

    def go_live(self, sub: Subscriber, replayed_ids: set[str]) -> None:
        """Deliver what was held while `sub` replayed history, then deliver live.

        A stream's id is the id of the message it ends as: a stream whose message is
        among `replayed_ids` ended before the replay read it, so its held stream events
        are dropped rather than drawn again.
        """
        pending, sub.pending = sub.pending or [], None
        for event in pending:
            if event.kind.startswith("stream.") and event.data["stream_id"] in replayed_ids:
                continue
            self._deliver(sub, event)
            if sub.outbox.closed:  # kicked while flushing: the rest would go nowhere
                break

    def dispatch(self, event: Event) -> int:
        """Hand `event` to every subscriber of its session; return how many got it."""
        self._track_stream(event)
        if event.session_id == ALL_SESSIONS:
            subs: tuple[Subscriber, ...] = tuple(
                sub for topic in self._topics.values() for sub in topic
            )
        else:
            subs = tuple(self._topics.get(event.session_id, ()))
        delivered = 0
        if subs:
            for sub in subs:
                if self._deliver(sub, event):
                    delivered += 1
            self._metrics.deliveries.inc(delivered)
        self._metrics.publish_to_send.observe(time.monotonic() - event.born)
        return delivered

    async def close_all(self, code: int, reason: str) -> None:
        """Close every subscriber (shutdown) and wait until the close frames are out."""
        for subs in tuple(self._topics.values()):
            for sub in tuple(subs):
                self._kick(sub, code, reason)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    def _deliver(self, sub: Subscriber, event: Event) -> bool:
        if sub.pending is not None:
            if len(sub.pending) >= self._max_pending:
                self._kick(sub, CLOSE_TOO_SLOW, "subscriber too slow: buffer overflowed")
                return False
            sub.pending.append(event)
            return True
        if event.seq is not None:
            if event.seq <= sub.last_seq:
                return False
            sub.last_seq = event.seq
        elif event.kind == "reset":
            sub.last_seq = 0  # the history is gone: its next message is seq 1 again
        if sub.outbox.put(event.asgi):
            return True
        if sub.outbox.overflowed:
            self._kick(sub, CLOSE_TOO_SLOW, "subscriber too slow: buffer overflowed")
        else:  # the socket failed; make sure it is closed rather than left silent
            self._kick(sub, 1011, "send failed")
        return False

    def _kick(self, sub: Subscriber, code: int, reason: str) -> None:
        if not self._remove(sub):
            return
        if code == CLOSE_TOO_SLOW:
            self._metrics.slow_consumers.inc()
        sub.outbox.closed = True
        task = asyncio.get_running_loop().create_task(self._close(sub, code, reason))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    @staticmethod
    async def _close(sub: Subscriber, code: int, reason: str) -> None:
        try:
            await sub.close(code, reason)
        except Exception:  # the socket may be closed or gone already: best effort
            return

    def _remove(self, sub: Subscriber) -> bool:
        subs = self._topics.get(sub.session_id)
        if subs is None or sub not in subs:
            return False
        subs.discard(sub)
        if not subs:
            del self._topics[sub.session_id]
        self._metrics.connections.dec()
        return True

    def _track_stream(self, event: Event) -> None:
        kind = event.kind
        if kind == "reset":
            if event.session_id == ALL_SESSIONS:
                self._streams.clear()
            else:
                self._streams.pop(event.session_id, None)
            return
        if not kind.startswith("stream."):
            return
        streams = self._streams.setdefault(event.session_id, {})
        stream_id = event.data["stream_id"]
        if kind == "stream.start":
            streams[stream_id] = _Stream(event.data["role"])
        elif kind == "stream.delta" and stream_id in streams:
            streams[stream_id].text.append(event.data["delta"])
        else:
            streams.pop(stream_id, None)
        if not streams:
            del self._streams[event.session_id]
