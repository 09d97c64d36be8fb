"""Hub: pending mode, replay overlap, stream snapshots, fan-out and slow consumers."""

from __future__ import annotations

import asyncio
import json

from bridge.events import ALL_SESSIONS, Event
from bridge.hub import CLOSE_SESSION_DELETED, CLOSE_TOO_SLOW, Hub, close_reason
from bridge.metrics import Metrics
from bridge.models import Draft, StoredMessage
from bridge.outbox import Message, Outbox


class Peer:
    """Collects what the hub writes to one socket."""

    def __init__(self) -> None:
        self.frames: list[dict] = []
        self.closed: tuple[int, str] | None = None
        self.writable = asyncio.Event()
        self.writable.set()

    async def send(self, message: Message) -> None:
        await self.writable.wait()
        self.frames.append(json.loads(message["text"]))

    async def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)

    def outbox(self, max_frames: int = 100) -> Outbox:
        return Outbox(self.send, max_frames=max_frames, max_bytes=1_000_000)

    @property
    def seqs(self) -> list[int]:
        return [f["seq"] for f in self.frames if "seq" in f]


def _msg(session: str, seq: int, content: str = "x", mid: str | None = None) -> StoredMessage:
    return StoredMessage.from_draft(session, seq, Draft.build("ai", content, id=mid))


def _hub(max_pending: int = 100) -> Hub:
    return Hub(max_pending=max_pending, metrics=Metrics())


async def test_fan_out_each_subscriber_once_in_order_and_other_sessions_untouched() -> None:
    hub = _hub()
    peers = [Peer() for _ in range(3)]
    other = Peer()
    async with (
        hub.subscribe("s", peers[0].outbox(), peers[0].close) as a,
        hub.subscribe("s", peers[1].outbox(), peers[1].close) as b,
        hub.subscribe("s", peers[2].outbox(), peers[2].close) as c,
        hub.subscribe("t", other.outbox(), other.close) as d,
    ):
        for sub in (a, b, c, d):
            hub.go_live(sub, set())
        for seq in range(1, 6):
            assert hub.dispatch(Event.message(_msg("s", seq))) == 3
        hub.dispatch(Event.message(_msg("s", 3)))  # a repeat is skipped by seq
        assert hub.count("s") == 3 and hub.connections == 4
    assert all(p.seqs == [1, 2, 3, 4, 5] for p in peers)
    assert other.frames == []
    assert hub.connections == 0


async def test_pending_events_flushed_after_replay_without_overlap() -> None:
    hub = _hub()
    peer = Peer()
    async with hub.subscribe("s", peer.outbox(), peer.close) as sub:
        hub.dispatch(Event.message(_msg("s", 3)))
        hub.dispatch(Event.message(_msg("s", 4)))
        assert peer.frames == []  # held while the replay runs
        for seq in (1, 2, 3):  # the replay read storage up to 3
            await sub.outbox.send(Event.message(_msg("s", seq)).asgi)
            sub.last_seq = seq
        hub.go_live(sub, set())
        hub.dispatch(Event.message(_msg("s", 5)))
    assert peer.seqs == [1, 2, 3, 4, 5]


async def test_late_joiner_gets_stream_text_so_far() -> None:
    hub = _hub()
    hub.dispatch(Event.of("s", "stream.start", stream_id="m1", role="ai"))
    hub.dispatch(Event.of("s", "stream.delta", stream_id="m1", delta="Hel"))
    hub.dispatch(Event.of("s", "stream.delta", stream_id="m1", delta="lo"))
    peer = Peer()
    async with hub.subscribe("s", peer.outbox(), peer.close) as sub:
        hub.go_live(sub, set())
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
    async with hub.subscribe("s", fresh.outbox(), fresh.close) as sub:
        hub.go_live(sub, set())
    assert fresh.frames == []


async def test_stream_already_in_replayed_history_is_not_drawn_again() -> None:
    hub = _hub()
    hub.dispatch(Event.of("s", "stream.start", stream_id="m1", role="ai"))
    hub.dispatch(Event.of("s", "stream.delta", stream_id="m1", delta="partial"))
    peer = Peer()
    async with hub.subscribe("s", peer.outbox(), peer.close) as sub:
        # The stream ended and was stored before the replay read it.
        hub.dispatch(Event.stream_end("m1", _msg("s", 1, "partial", mid="m1")))
        await sub.outbox.send(Event.message(_msg("s", 1, "partial", mid="m1")).asgi)
        sub.last_seq = 1
        hub.go_live(sub, {"m1"})
    assert [f["event"] for f in peer.frames] == ["message"]


async def test_slow_subscriber_kicked_with_4000_others_unaffected() -> None:
    hub = _hub()
    slow, fast = Peer(), Peer()
    slow.writable.clear()
    async with (
        hub.subscribe("s", slow.outbox(max_frames=5), slow.close) as a,
        hub.subscribe("s", fast.outbox(), fast.close) as b,
    ):
        hub.go_live(a, set())
        hub.go_live(b, set())
        for seq in range(1, 21):
            hub.dispatch(Event.message(_msg("s", seq)))
        await hub.close_all(1001, "test over")
    assert slow.closed is not None and slow.closed[0] == CLOSE_TOO_SLOW
    assert fast.seqs == list(range(1, 21))
    assert fast.closed == (1001, "test over")


async def test_pending_overflow_kicks_too() -> None:
    hub = _hub(max_pending=3)
    peer = Peer()
    async with hub.subscribe("s", peer.outbox(), peer.close):
        for seq in range(1, 10):
            hub.dispatch(Event.message(_msg("s", seq)))
        await hub.close_all(1001, "")
    assert peer.closed is not None and peer.closed[0] == CLOSE_TOO_SLOW


async def test_broadcast_and_reset() -> None:
    hub = _hub()
    p1, p2 = Peer(), Peer()
    async with (
        hub.subscribe("a", p1.outbox(), p1.close) as s1,
        hub.subscribe("b", p2.outbox(), p2.close) as s2,
    ):
        hub.go_live(s1, set())
        hub.go_live(s2, set())
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


async def test_late_joiner_gets_stream_text_only_within_its_byte_budget() -> None:
    """The text so far of an open stream counts against the joiner's byte budget: one
    that does not fit is announced by `stream.start` alone; the rest still arrives."""
    hub = Hub(max_pending=100, max_pending_bytes=1_000, metrics=Metrics())
    hub.dispatch(Event.of("s", "stream.start", stream_id="big", role="ai"))
    hub.dispatch(Event.of("s", "stream.delta", stream_id="big", delta="x" * 5_000))
    hub.dispatch(Event.of("s", "stream.start", stream_id="small", role="ai"))
    hub.dispatch(Event.of("s", "stream.delta", stream_id="small", delta="hi"))
    peer, other = Peer(), Peer()
    async with (
        hub.subscribe("s", peer.outbox(), peer.close) as sub,
        hub.subscribe("s", other.outbox(), other.close) as sub2,
    ):
        assert sub.pending_bytes <= 1_000
        hub.go_live(sub, set())
        hub.go_live(sub2, set())
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
    hub = Hub(max_pending=100, max_pending_bytes=5_000, metrics=Metrics())
    peer = Peer()
    async with hub.subscribe("s", peer.outbox(), peer.close):
        for seq in range(1, 10):  # ~1 KB each: the sixth passes 5,000 bytes
            hub.dispatch(Event.message(_msg("s", seq, "y" * 1_000)))
        await hub.close_all(1001, "")
    assert peer.closed is not None and peer.closed[0] == CLOSE_TOO_SLOW


async def test_close_on_reset_closes_with_4004_after_the_reset() -> None:
    hub = Hub(max_pending=100, metrics=Metrics(), close_on_reset=True)
    live, replaying, other, elsewhere = Peer(), Peer(), Peer(), Peer()
    async with (
        hub.subscribe("s", live.outbox(), live.close) as a,
        hub.subscribe("s", replaying.outbox(), replaying.close),
        hub.subscribe("t", other.outbox(), other.close) as c,
        hub.subscribe("u", elsewhere.outbox(), elsewhere.close) as d,
    ):
        hub.go_live(a, set())
        hub.go_live(c, set())
        hub.go_live(d, set())
        hub.dispatch(Event.of("s", "reset"))
        assert hub.count("s") == 0 and hub.count("t") == 1
        hub.dispatch(Event.of(ALL_SESSIONS, "reset"))
        assert hub.connections == 0
        await hub.close_all(1001, "")
    assert [f["event"] for f in live.frames] == ["reset"]
    for peer in (live, replaying, other, elsewhere):
        assert peer.closed == (CLOSE_SESSION_DELETED, "session deleted")


async def test_close_reasons_are_cut_to_123_bytes_of_utf8() -> None:
    for text in ("é" * 100, "😀" * 40, "a" * 200, "x" * 122 + "é", "ok", "\ud800" * 10):
        cut = close_reason(text)
        assert len(cut.encode()) <= 123
        assert text.startswith(cut) or "\ud800" in text
    assert close_reason("x" * 122 + "é") == "x" * 122  # never half a character
    hub = _hub()
    peer = Peer()
    async with hub.subscribe("s", peer.outbox(), peer.close) as sub:
        hub.kick(sub, 1008, "origin " + "é" * 100)
        await hub.close_all(1001, "")
    assert peer.closed is not None and len(peer.closed[1].encode()) <= 123
