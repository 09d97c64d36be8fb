"""In-process fan-out keyed by session id. Knows nothing of HTTP or storage.

A subscriber joins with its outbox *held*: live events wait there (bounded, the one
buffer a subscriber has) while its history is replayed, then `go_live` releases them,
skipping by `seq` what the replay already sent. Every frame is serialised once per event
(`Event.frame`) and written to each socket through its `Outbox`, so one slow socket never
holds up the others; one whose outbox overflows is closed with 4000 and resumes later with
`after`.

The hub also remembers the text so far of every streamed reply in progress, so that a
subscriber joining mid-stream starts with `stream.start` and one `stream.delta`. That
text counts against the joiner's byte budget like anything else held for it: a stream
whose text does not fit is announced by `stream.start` alone (its later deltas and its
`stream.end`, which carries the whole message, still come), so that a few huge open
streams cannot keep every new viewer out.

With session tokens (an API key configured), a socket is closed with 4004 after its
session's `reset`: a token names a session, and a session deleted and created again is
not the one the token was minted for.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field

from bridge.events import ALL_SESSIONS, Event
from bridge.metrics import Metrics
from bridge.outbox import Outbox, Send
from bridge.wire import CLOSE_SESSION_DELETED, CLOSE_TOO_SLOW

__all__ = [
    "CLOSE_REASON_BYTES",
    "Closer",
    "Hub",
    "Subscriber",
    "close_reason",
]

CLOSE_REASON_BYTES = 123
"""A close frame's payload is at most 125 bytes: the code's 2, then the reason."""
Closer = Callable[[int, str], Awaitable[None]]
"""Closes one socket with a code and a reason (`WebSocket.close`)."""


def close_reason(text: str) -> str:
    """`text` cut to the 123 bytes of UTF-8 a close frame has room for, never inside a
    character. A longer reason makes the close itself fail (the client sees 1006)."""
    if len(text) <= CLOSE_REASON_BYTES and text.isascii():
        return text  # the common case
    data = text.encode("utf-8", "replace")  # "replace": a lone surrogate cannot be sent
    return data[:CLOSE_REASON_BYTES].decode("utf-8", "ignore")


class Subscriber:
    """One socket subscribed to one session: its outbox and the last `seq` it was sent."""

    __slots__ = ("_hub", "close", "last_seq", "outbox", "session_id")

    def __init__(self, hub: Hub, session_id: str, outbox: Outbox, close: Closer) -> None:
        self._hub = hub
        self.session_id = session_id
        self.outbox = outbox
        self.close = close
        self.last_seq = 0

    def put(self, event: Event) -> bool:
        """Write or queue a frame of this socket's own (`pong`, `error`): it counts against
        the same buffer as the session's events, and overflowing it closes the socket with
        4000 all the same. False if it was not taken."""
        if self.outbox.put(event):
            return True
        self._hub._not_taken(self)
        return False


@dataclass
class _Stream:
    role: str
    text: list[str] = field(default_factory=list)
    # What a late joiner gets, built once for every joiner until the next delta.
    snapshot: tuple[Event, Event] | None = None

    def joined(self, session_id: str, stream_id: str) -> tuple[Event, Event]:
        """`stream.start` and one `stream.delta` with the text so far."""
        if self.snapshot is None:
            text = "".join(self.text)
            self.text = [text]
            self.snapshot = (
                Event.of(session_id, "stream.start", stream_id=stream_id, role=self.role),
                Event.of(session_id, "stream.delta", stream_id=stream_id, delta=text),
            )
        return self.snapshot


class Hub:
    """Subscribers and in-progress streams of every session served by this process."""

    def __init__(
        self,
        *,
        metrics: Metrics,
        buffer_frames: int,
        buffer_bytes: int,
        close_on_reset: bool = False,
    ) -> None:
        """Each subscriber's outbox holds at most `buffer_frames` frames and
        `buffer_bytes` of frame text (`subscriber_buffer`, `subscriber_buffer_bytes`);
        `close_on_reset`: close subscribers with 4004 after their session's `reset`
        (sockets opened with a session token)."""
        self._buffer_frames = buffer_frames
        self._buffer_bytes = buffer_bytes
        self._close_on_reset = close_on_reset
        self._metrics = metrics
        self._topics: dict[str, set[Subscriber]] = {}
        self._streams: dict[str, dict[str, _Stream]] = {}
        self._closing: set[asyncio.Task[None]] = set()

    @property
    def connections(self) -> int:
        """Subscribers of every session on this process."""
        return sum(len(subs) for subs in self._topics.values())

    def join(self, session_id: str, send: Send, close: Closer) -> Subscriber:
        """Subscribe the socket of `send` and `close` to `session_id`, its outbox held
        until `go_live`. Pair with `leave`.

        A subscriber joining mid-stream has `stream.start` and the text so far queued
        first, as far as its outbox's bounds allow."""
        outbox = Outbox(send, max_frames=self._buffer_frames, max_bytes=self._buffer_bytes)
        sub = Subscriber(self, session_id, outbox, close)
        for stream_id, stream in self._streams.get(session_id, {}).items():
            start, delta = stream.joined(session_id, stream_id)
            if not outbox.fits(start):
                break  # unannounced streams reach this subscriber as deltas, then stream.end
            outbox.put(start)
            if outbox.fits(delta):
                outbox.put(delta)
        self._topics.setdefault(session_id, set()).add(sub)
        self._metrics.connections.inc()
        return sub

    async def leave(self, sub: Subscriber) -> None:
        """Unsubscribe `sub` (if a kick has not already) and stop its writes."""
        self._remove(sub)
        await sub.outbox.aclose()

    def go_live(self, sub: Subscriber, replayed_ids: Collection[str] = ()) -> None:
        """Deliver what was held while `sub` replayed history, then deliver live.

        A stream's id is the id of the message it ends as: a stream whose message is
        among `replayed_ids` ended before the replay read it, so its held stream events
        are dropped rather than drawn again.
        """
        for event in sub.outbox.release():
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

    def kick(self, sub: Subscriber, code: int, reason: str) -> None:
        """Unsubscribe `sub` now and close its socket with `code` (in the background)."""
        if not self._remove(sub):
            return
        if code == CLOSE_TOO_SLOW:
            self._metrics.slow_consumers.inc()
        sub.outbox.stop()
        task = asyncio.get_running_loop().create_task(self._close(sub, code, reason))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close_all(self, code: int, reason: str) -> None:
        """Close every subscriber (shutdown) and wait until the close frames are out."""
        for subs in tuple(self._topics.values()):
            for sub in tuple(subs):
                self.kick(sub, code, reason)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    def _deliver(self, sub: Subscriber, event: Event) -> bool:
        outbox = sub.outbox
        if outbox.held:
            # Replaying: queue everything; `go_live` sorts it out by seq.
            if event.kind == "reset" and self._close_on_reset:
                self.kick(sub, CLOSE_SESSION_DELETED, "session deleted")
                return False
        elif event.seq is not None:
            if event.seq <= sub.last_seq:
                return False
            sub.last_seq = event.seq
        elif event.kind == "reset":
            sub.last_seq = 0  # the history is gone: its next message is seq 1 again
            if self._close_on_reset:
                sent = outbox.put(event)
                self.kick(sub, CLOSE_SESSION_DELETED, "session deleted")
                return sent
        if outbox.put(event):
            return True
        self._not_taken(sub)
        return False

    def _not_taken(self, sub: Subscriber) -> None:
        """`sub`'s outbox refused a frame: close the socket rather than leave it silent."""
        if sub.outbox.overflowed:
            self.kick(sub, CLOSE_TOO_SLOW, "subscriber too slow: buffer overflowed")
        else:  # the socket failed (or was closed: then this does nothing)
            self.kick(sub, 1011, "send failed")

    @staticmethod
    async def _close(sub: Subscriber, code: int, reason: str) -> None:
        try:
            await sub.close(code, close_reason(reason))
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
            stream = streams[stream_id]
            stream.text.append(event.data["delta"])
            stream.snapshot = None
        else:
            streams.pop(stream_id, None)
        if not streams:
            del self._streams[event.session_id]
