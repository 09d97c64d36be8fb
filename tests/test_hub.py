"""bridge.hub: held outboxes while history replays, replay overlap, stream snapshots,
fan-out, slow consumers and closes. Real `Hub`, `Outbox` and `Event`s; the sockets are
in-memory peers (not project modules)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from bridge.events import ALL_SESSIONS, Event
from bridge.hub import Hub, Subscriber, close_reason
from bridge.metrics import Metrics
from bridge.models import Draft, StoredMessage
from bridge.outbox import Message
from bridge.wire import CLOSE_SESSION_DELETED, CLOSE_TOO_SLOW


class Peer:
    """Collects what is written to one socket; writable until told otherwise."""

    def __init__(self) -> None:
        self.frames: list[dict] = []
        self.attempts = 0  # writes begun, written or not
        self.closed: tuple[int, str] | None = None
        self.writable = asyncio.Event()
        self.writable.set()
        self._changed = asyncio.Event()

    async def send(self, message: Message) -> None:
        self.attempts += 1
        self._changed.set()
        await self.writable.wait()
        self.frames.append(json.loads(message["text"]))
        self._changed.set()

    async def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)
        self._changed.set()

    async def until(self, done: Callable[[Peer], bool], timeout: float = 5.0) -> None:
        """Wait until `done(self)` holds, checked whenever a write begins or ends and on
        close."""
        async with asyncio.timeout(timeout):
            while not done(self):
                self._changed.clear()
                await self._changed.wait()

    @property
    def seqs(self) -> list[int]:
        return [f["seq"] for f in self.frames if "seq" in f]


@asynccontextmanager
async def joined(hub: Hub, session: str, peer: Peer) -> AsyncIterator[Subscriber]:
    """`hub.join` ... `hub.leave`, as the service pairs them."""
    sub = hub.join(session, peer.send, peer.close)
    try:
        yield sub
    finally:
        await hub.leave(sub)


def _msg(session: str, seq: int, content: str = "x", mid: str | None = None) -> StoredMessage:
    return StoredMessage.from_draft(session, seq, Draft.build("ai", content, id=mid))


def _hub(
    buffer_frames: int = 100,
    buffer_bytes: int = 1_000_000,
    *,
    close_on_reset: bool = False,
    metrics: Metrics | None = None,
) -> Hub:
    return Hub(
        metrics=metrics or Metrics(),
        buffer_frames=buffer_frames,
        buffer_bytes=buffer_bytes,
        close_on_reset=close_on_reset,
    )


def _connections(metrics: Metrics) -> float | None:
    """The `bridge_ws_connections` gauge: subscribers of this hub."""
    return metrics.registry.get_sample_value("bridge_ws_connections")


async def test_fan_out_each_subscriber_once_in_order_and_other_sessions_untouched() -> None:
    metrics = Metrics()
    hub = _hub(metrics=metrics)
    peers = [Peer() for _ in range(3)]
    other = Peer()
    async with (
        joined(hub, "s", peers[0]) as a,
        joined(hub, "s", peers[1]) as b,
        joined(hub, "s", peers[2]) as c,
        joined(hub, "t", other) as d,
    ):
        for sub in (a, b, c, d):
            hub.go_live(sub)
        for seq in range(1, 6):
            assert hub.dispatch(Event.message(_msg("s", seq))) == 3
        assert hub.dispatch(Event.message(_msg("s", 3))) == 0  # a repeat is skipped by seq
        assert _connections(metrics) == 4
    assert all(p.seqs == [1, 2, 3, 4, 5] for p in peers)
    assert other.frames == []
    assert _connections(metrics) == 0


async def test_held_events_flushed_after_replay_without_overlap() -> None:
    hub = _hub()
    peer = Peer()
    async with joined(hub, "s", peer) as sub:
        hub.dispatch(Event.message(_msg("s", 3)))
        hub.dispatch(Event.message(_msg("s", 4)))
        assert peer.frames == []  # held while the replay runs
        assert sub.outbox.queued == 2
        for seq in (1, 2, 3):  # the replay read storage up to 3
            await sub.outbox.send(Event.message(_msg("s", seq)))
            sub.last_seq = seq
        hub.go_live(sub)
        hub.dispatch(Event.message(_msg("s", 5)))
    assert peer.seqs == [1, 2, 3, 4, 5]


async def test_late_joiner_gets_stream_text_so_far() -> None:
    hub = _hub()
    hub.dispatch(Event.of("s", "stream.start", stream_id="m1", role="ai"))
    hub.dispatch(Event.of("s", "stream.delta", stream_id="m1", delta="Hel"))
    hub.dispatch(Event.of("s", "stream.delta", stream_id="m1", delta="lo"))
    peer = Peer()
    async with joined(hub, "s", peer) as sub:
        hub.go_live(sub)
        hub.dispatch(Event.of("s", "stream.delta", stream_id="m1", delta="!"))
        hub.dispatch(Event.stream_end("m1", _msg("s", 1, "Hello!", mid="m1")))
    kinds = [(f["event"], f.get("delta")) for f in peer.frames]
    assert kinds == [
        ("stream.start", None),
        ("stream.delta", "Hello"),
        ("stream.delta", "!"),
        ("stream.end", None),
    ]
    # The stream is over: a new joiner gets no stream events.
    fresh = Peer()
    async with joined(hub, "s", fresh) as sub:
        hub.go_live(sub)
    assert fresh.frames == []


async def test_stream_already_in_replayed_history_is_not_drawn_again() -> None:
    hub = _hub()
    hub.dispatch(Event.of("s", "stream.start", stream_id="m1", role="ai"))
    hub.dispatch(Event.of("s", "stream.delta", stream_id="m1", delta="partial"))
    peer = Peer()
    async with joined(hub, "s", peer) as sub:
        # The stream ended and was stored before the replay read it.
        hub.dispatch(Event.stream_end("m1", _msg("s", 1, "partial", mid="m1")))
        await sub.outbox.send(Event.message(_msg("s", 1, "partial", mid="m1")))
        sub.last_seq = 1
        hub.go_live(sub, {"m1"})
    assert [f["event"] for f in peer.frames] == ["message"]


async def test_slow_subscriber_kicked_with_4000_others_unaffected() -> None:
    hub = _hub(buffer_frames=5)
    slow, fast = Peer(), Peer()
    slow.writable.clear()
    async with joined(hub, "s", slow) as a, joined(hub, "s", fast) as b:
        hub.go_live(a)
        hub.go_live(b)
        for seq in range(1, 21):
            hub.dispatch(Event.message(_msg("s", seq)))
        await hub.close_all(1001, "test over")
    assert slow.closed is not None and slow.closed[0] == CLOSE_TOO_SLOW
    assert fast.seqs == list(range(1, 21))
    assert fast.closed == (1001, "test over")


async def test_held_overflow_kicks_too() -> None:
    hub = _hub(buffer_frames=3)
    peer = Peer()
    async with joined(hub, "s", peer):
        for seq in range(1, 10):
            hub.dispatch(Event.message(_msg("s", seq)))
        await hub.close_all(1001, "")
    assert peer.closed is not None and peer.closed[0] == CLOSE_TOO_SLOW


async def test_held_and_unsent_frames_share_one_bound() -> None:
    """One buffer per subscriber: what waited during the replay and what then waits for
    a blocked socket count against the same `buffer_frames`, not one bound each."""
    hub = _hub(buffer_frames=4)
    peer = Peer()
    peer.writable.clear()
    async with joined(hub, "s", peer) as sub:
        for seq in (1, 2, 3):
            hub.dispatch(Event.message(_msg("s", seq)))
        hub.go_live(sub)  # the first write blocks; the other two wait behind it
        assert peer.closed is None and sub.outbox.queued == 2
        for seq in (4, 5):
            hub.dispatch(Event.message(_msg("s", seq)))
        assert peer.closed is None and sub.outbox.queued == 4
        hub.dispatch(Event.message(_msg("s", 6)))  # the fifth waiting frame: too many
        await hub.close_all(1001, "")
    assert peer.closed is not None and peer.closed[0] == CLOSE_TOO_SLOW


async def test_a_sockets_own_frames_share_its_buffer_and_overflow_closes_it() -> None:
    """`pong`s and `error`s a client provokes while it reads nothing fill the same buffer
    as the session's events; past its bound the socket is closed with 4000, not left
    silent."""
    hub = _hub(buffer_frames=3)
    peer = Peer()
    peer.writable.clear()
    async with joined(hub, "s", peer) as sub:
        hub.go_live(sub)
        pong = Event.of("s", "pong")
        assert all(sub.put(pong) for _ in range(4))  # one being written, three waiting
        assert not sub.put(pong)
        await peer.until(lambda p: p.closed is not None)
        assert hub.dispatch(Event.message(_msg("s", 1))) == 0  # no longer subscribed
    assert peer.closed is not None and peer.closed[0] == CLOSE_TOO_SLOW


async def test_broadcast_and_reset() -> None:
    hub = _hub()
    p1, p2 = Peer(), Peer()
    async with joined(hub, "a", p1) as s1, joined(hub, "b", p2) as s2:
        hub.go_live(s1)
        hub.go_live(s2)
        hub.dispatch(Event.message(_msg("a", 7)))
        assert hub.dispatch(Event.of(ALL_SESSIONS, "template", template={"x": 1})) == 2
        hub.dispatch(Event.of("a", "reset"))
        hub.dispatch(Event.message(_msg("a", 1)))  # new history after reset: seq 1 again
    assert [f["event"] for f in p1.frames] == ["message", "template", "reset", "message"]
    assert [f["event"] for f in p2.frames] == ["template"]


async def test_frame_serialised_once_per_event() -> None:
    event = Event.message(_msg("s", 1, "héllo"))
    again = Event.from_frame("s", event.frame)
    assert again.seq == 1 and again.kind == "message" and again.frame is event.frame
    assert json.loads(event.frame)["message"]["content"] == "héllo"
    hub = _hub()
    peers = [Peer() for _ in range(3)]
    sent: list[Message] = []

    async def keep(message: Message) -> None:
        sent.append(message)

    async with joined(hub, "s", peers[0]) as a, joined(hub, "s", peers[1]) as b:
        c = hub.join("s", keep, peers[2].close)
        for sub in (a, b, c):
            hub.go_live(sub)
        hub.dispatch(event)
        await hub.leave(c)
    assert sent[0] is event.asgi  # every socket is handed the same message, built once


async def test_late_joiner_gets_stream_text_only_within_its_byte_budget() -> None:
    """The text so far of an open stream counts against the joiner's byte budget: one
    that does not fit is announced by `stream.start` alone; the rest still arrives."""
    hub = _hub(buffer_bytes=1_000)
    hub.dispatch(Event.of("s", "stream.start", stream_id="big", role="ai"))
    hub.dispatch(Event.of("s", "stream.delta", stream_id="big", delta="x" * 5_000))
    hub.dispatch(Event.of("s", "stream.start", stream_id="small", role="ai"))
    hub.dispatch(Event.of("s", "stream.delta", stream_id="small", delta="hi"))
    peer, other = Peer(), Peer()
    async with joined(hub, "s", peer) as sub, joined(hub, "s", other) as sub2:
        assert sub.outbox.queued_bytes <= 1_000
        hub.go_live(sub)
        hub.go_live(sub2)
        hub.dispatch(Event.of("s", "stream.delta", stream_id="big", delta="!"))
    got = [(f["event"], f["stream_id"], f.get("delta")) for f in peer.frames]
    assert got == [
        ("stream.start", "big", None),
        ("stream.start", "small", None),
        ("stream.delta", "small", "hi"),
        ("stream.delta", "big", "!"),
    ]
    assert peer.closed is None
    assert other.frames == peer.frames  # the snapshot is shared, the outcome the same


async def test_events_held_during_replay_are_bounded_in_bytes_too() -> None:
    hub = _hub(buffer_bytes=5_000)
    peer = Peer()
    async with joined(hub, "s", peer):
        for seq in range(1, 10):  # ~1 KB each: the sixth passes 5,000 bytes
            hub.dispatch(Event.message(_msg("s", seq, "y" * 1_000)))
        await hub.close_all(1001, "")
    assert peer.closed is not None and peer.closed[0] == CLOSE_TOO_SLOW


async def test_close_on_reset_closes_with_4004_after_the_reset() -> None:
    metrics = Metrics()
    hub = _hub(close_on_reset=True, metrics=metrics)
    live, replaying, other, elsewhere = Peer(), Peer(), Peer(), Peer()
    async with (
        joined(hub, "s", live) as a,
        joined(hub, "s", replaying),
        joined(hub, "t", other) as c,
        joined(hub, "u", elsewhere) as d,
    ):
        hub.go_live(a)
        hub.go_live(c)
        hub.go_live(d)
        hub.dispatch(Event.of("s", "reset"))
        assert _connections(metrics) == 2  # both of "s" are gone, "t" and "u" stay
        assert hub.dispatch(Event.of("t", "presence", subscribers=1)) == 1
        hub.dispatch(Event.of(ALL_SESSIONS, "reset"))
        assert _connections(metrics) == 0
        await hub.close_all(1001, "")
    assert [f["event"] for f in live.frames] == ["reset"]
    for peer in (live, replaying, other, elsewhere):
        assert peer.closed == (CLOSE_SESSION_DELETED, "session deleted")


async def test_kicked_subscriber_leaves_once_and_gets_nothing_more() -> None:
    metrics = Metrics()
    hub = _hub(metrics=metrics)
    peer = Peer()
    async with joined(hub, "s", peer) as sub:
        hub.go_live(sub)
        hub.kick(sub, 1008, "session token expired")
        hub.kick(sub, 4000, "again")  # a second kick of the same socket does nothing
        assert hub.dispatch(Event.message(_msg("s", 1))) == 0
        await hub.close_all(1001, "")
    assert peer.closed == (1008, "session token expired") and peer.frames == []
    assert _connections(metrics) == 0


async def test_close_reasons_are_cut_to_123_bytes_of_utf8() -> None:
    for text in ("é" * 100, "😀" * 40, "a" * 200, "x" * 122 + "é", "ok", "\ud800" * 10):
        cut = close_reason(text)
        assert len(cut.encode()) <= 123
        assert text.startswith(cut) or "\ud800" in text
    assert close_reason("x" * 122 + "é") == "x" * 122  # never half a character
    hub = _hub()
    peer = Peer()
    async with joined(hub, "s", peer) as sub:
        hub.kick(sub, 1008, "origin " + "é" * 100)
        await hub.close_all(1001, "")
    assert peer.closed is not None and len(peer.closed[1].encode()) <= 123
