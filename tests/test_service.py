"""bridge.service: the use cases, over a real memory store, its broker and a real hub.

No HTTP and no server: the sockets are in-memory peers (`tests.test_hub.Peer`), which is
what the transport hands `BridgeService.subscribe` (an ASGI send and a close)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import pytest

from bridge.broker import open_backend
from bridge.errors import Conflict, InvalidInput, NotFound, PayloadTooLarge
from bridge.hub import Hub, Subscriber
from bridge.metrics import Metrics
from bridge.models import MessageIn, Template
from bridge.service import BridgeService
from bridge.settings import Settings
from bridge.wire import CLOSE_GOING_AWAY, CLOSE_POLICY, TOKEN_EXPIRED, WELCOME_ID
from tests.test_hub import Peer


@asynccontextmanager
async def _service(**overrides: object) -> AsyncIterator[BridgeService]:
    """A started service on a fresh memory store, wired as `create_app` wires it;
    stopped and closed on exit."""
    settings = Settings.load({}, store="memory://", presence_interval_s=0, **overrides)
    backend = open_backend(settings.store, settings)
    metrics = Metrics()
    hub = Hub(
        metrics=metrics,
        buffer_frames=settings.subscriber_buffer,
        buffer_bytes=settings.subscriber_buffer_bytes,
    )
    service = BridgeService(settings, backend.storage, backend.broker, hub, metrics)
    await backend.storage.open()
    try:
        await service.start()
        yield service
    finally:
        await service.stop()
        await backend.broker.close()
        await backend.storage.close()


@pytest.fixture
async def service() -> AsyncIterator[BridgeService]:
    async with _service() as started:
        yield started


def _user(content: str, **kw: str) -> MessageIn:
    return MessageIn(role="user", content=content, **kw)  # type: ignore[arg-type]


def _messages(peer: Peer) -> list[tuple[int, str]]:
    """(seq, content) of the stored messages a peer was sent."""
    return [
        (f["seq"], f["message"]["content"])
        for f in peer.frames
        if f["event"] in ("message", "stream.end")
    ]


def _kinds(peer: Peer) -> list[str]:
    return [f["event"] for f in peer.frames]


# -- sessions and messages ---------------------------------------------------------------


async def test_a_session_starts_with_the_welcome_and_posts_follow_in_seq_order(
    service: BridgeService,
) -> None:
    first = await service.post("s", _user("one"))
    second = await service.post("s", _user("two"))
    assert (first.seq, second.seq) == (2, 3)
    pages = await service.history("s")
    history = [m async for page in pages for m in page]
    assert [(m.seq, m.id == WELCOME_ID, m.content) for m in history][1:] == [
        (2, False, "one"),
        (3, False, "two"),
    ]
    assert history[0].id == WELCOME_ID and history[0].content == service.template.welcome_msg
    assert (await service.create_session("s")) == history  # exists: its messages, unchanged
    assert (await service.last_message("s", "user")).content == "two"
    assert (await service.last_message("s", "ai")).id == WELCOME_ID
    assert await service.last_session() == "s"


async def test_an_idempotency_key_returns_the_first_result_and_refuses_other_content(
    service: BridgeService,
) -> None:
    first = await service.post("s", _user("once"), idempotency_key="k-1")
    again = await service.post("s", _user("once"), idempotency_key="k-1")
    assert again == first
    with pytest.raises(Conflict):
        await service.post("s", _user("something else"), idempotency_key="k-1")
    with pytest.raises(InvalidInput):
        await service.post("s", _user("x"), idempotency_key="no spaces allowed")
    assert (await service.session("s")).info.last_seq == 2


async def test_inputs_are_checked_before_anything_is_stored() -> None:
    async with _service(max_message_bytes=10) as service:
        with pytest.raises(PayloadTooLarge):
            await service.post("s", _user("x" * 11))
        with pytest.raises(InvalidInput):
            await service.post("bad/id", _user("x"))
        with pytest.raises(InvalidInput):
            await service.last_message("s", "robot")
        with pytest.raises(InvalidInput):
            await service.sessions(limit=0)
        with pytest.raises(NotFound):
            await service.session("s")  # nothing above created it
        with pytest.raises(NotFound):
            await service.last_session()


async def test_delete_and_reset_reach_subscribers(service: BridgeService) -> None:
    peer = Peer()
    async with service.subscribe("s", 0, peer.send, peer.close):
        await service.delete_session("s")
        await peer.until(lambda p: "reset" in _kinds(p))
        with pytest.raises(NotFound):
            await service.delete_session("s")
        await service.post("s", _user("again"))  # a new history: seq 1 (welcome), then 2
        await peer.until(lambda p: _messages(p)[-1:] == [(2, "again")])
        await service.reset_all()
        await peer.until(lambda p: _kinds(p).count("reset") == 2)
    with pytest.raises(NotFound):
        await service.session("s")


# -- subscribe ---------------------------------------------------------------------------


async def test_subscribe_sends_hello_and_replay_after_then_live(service: BridgeService) -> None:
    for text in ("a", "b", "c"):
        await service.post("s", _user(text))
    peer = Peer()
    async with service.subscribe("s", 2, peer.send, peer.close) as sub:
        hello = peer.frames[0]
        assert hello["event"] == "hello" and hello["session_id"] == "s"
        assert hello["last_seq"] == 4 and hello["subscribers"] == 1 and hello["epoch"]
        assert hello["template"] == service.template.model_dump()
        assert _messages(peer) == [(3, "b"), (4, "c")]  # replayed before entry returns
        assert sub.last_seq == 4
        await service.post("s", _user("d"))
        assert _messages(peer)[-1] == (5, "d")  # live, written inline
        assert (await service.session("s")).subscribers == 1
    assert (await service.session("s")).subscribers == 0  # leaving counts out
    assert peer.closed is None


async def test_subscribing_creates_the_session_with_its_welcome(service: BridgeService) -> None:
    peer = Peer()
    async with service.subscribe("new", 0, peer.send, peer.close):
        assert peer.frames[0]["last_seq"] == 1
        assert [f["message"]["id"] for f in peer.frames[1:]] == [WELCOME_ID]


async def test_messages_posted_during_the_replay_arrive_once_in_order(
    service: BridgeService,
) -> None:
    """The subscriber joins the hub before the store is read: what is published while
    the replay is being written waits in its outbox and follows the replay, once."""
    await service.post("s", _user("stored"))
    peer = Peer()
    peer.writable.clear()  # the hello cannot be written yet
    entering = asyncio.create_task(_enter(service.subscribe("s", 0, peer.send, peer.close)))
    await peer.until(lambda p: p.attempts == 1)  # joined; the hello is being written
    posted = [await service.post("s", _user(f"live-{i}")) for i in range(3)]
    peer.writable.set()
    sub, leave = await asyncio.wait_for(entering, 5)
    await service.post("s", _user("after"))
    await leave()
    assert [seq for seq, _ in _messages(peer)] == [1, 2, *[m.seq for m in posted], 6]
    assert _kinds(peer)[0] == "hello" and peer.frames[0]["last_seq"] == 2
    assert sub.last_seq == 6


async def _enter(
    subscription: AbstractAsyncContextManager[Subscriber],
) -> tuple[Subscriber, Callable[[], object]]:
    sub = await subscription.__aenter__()

    async def leave() -> None:
        await subscription.__aexit__(None, None, None)

    return sub, leave


async def test_a_socket_whose_token_has_expired_is_closed_with_1008(
    service: BridgeService,
) -> None:
    peer = Peer()
    async with service.subscribe("s", 0, peer.send, peer.close, expires_at=0.0):
        await peer.until(lambda p: p.closed is not None)
        assert peer.closed == (CLOSE_POLICY, TOKEN_EXPIRED)
        await service.post("s", _user("not for a closed socket"))
    assert "not for a closed socket" not in [content for _, content in _messages(peer)]


async def test_subscribe_refuses_bad_input_before_anything_is_sent(
    service: BridgeService,
) -> None:
    peer = Peer()
    with pytest.raises(InvalidInput):
        service.subscribe("no spaces", 0, peer.send, peer.close)
    with pytest.raises(InvalidInput):
        service.subscribe("s", -1, peer.send, peer.close)
    assert peer.frames == []


async def test_presence_is_announced_once_for_several_joins(service: BridgeService) -> None:
    a, b, c = Peer(), Peer(), Peer()
    async with service.subscribe("p", 1, a.send, a.close):
        async with (
            service.subscribe("p", 1, b.send, b.close),
            service.subscribe("p", 1, c.send, c.close),
        ):
            await a.until(lambda p: any(f.get("subscribers") == 3 for f in p.frames[1:]))
        await a.until(lambda p: p.frames[-1] == {"event": "presence", "subscribers": 1})
    presence = [f["subscribers"] for f in a.frames if f["event"] == "presence"]
    assert presence[-1] == 1 and len(presence) <= 3  # coalesced, never one per join


async def test_template_change_reaches_every_session(service: BridgeService) -> None:
    a, b = Peer(), Peer()
    async with (
        service.subscribe("t1", 1, a.send, a.close),
        service.subscribe("t2", 1, b.send, b.close),
    ):
        saved = await service.set_template(Template(welcome_msg="New!", ai_avatar="🦜"))
        assert service.template == saved
        for peer in (a, b):
            await peer.until(lambda p: "template" in _kinds(p))
            assert peer.frames[-1]["template"]["ai_avatar"] == "🦜"
    # The welcome of a new session follows the template in force.
    assert (await service.create_session("t3"))[0].content == "New!"


# -- streams -------------------------------------------------------------------------------


async def _chunks(*parts: str, fail: bool = False) -> AsyncIterator[str]:
    for part in parts:
        yield part
    if fail:
        raise InvalidInput("the sender sent garbage")


async def test_a_stream_is_published_as_it_comes_then_stored_whole(
    service: BridgeService,
) -> None:
    peer = Peer()
    async with service.subscribe("st", 1, peer.send, peer.close):
        stored = await service.stream("st", "ai", _chunks("Hel", "lo", "!"))
        assert stored.content == "Hello!" and stored.seq == 2
        kinds = _kinds(peer)
        assert kinds[0] == "hello" and kinds[1] == "stream.start" and kinds[-1] == "stream.end"
        deltas = "".join(f["delta"] for f in peer.frames if f["event"] == "stream.delta")
        assert deltas == "Hello!"
    assert (await service.last_message("st")).content == "Hello!"


async def test_a_failed_stream_is_aborted_and_stores_nothing(service: BridgeService) -> None:
    peer = Peer()
    async with service.subscribe("sf", 1, peer.send, peer.close):
        with pytest.raises(InvalidInput):
            await service.stream("sf", "ai", _chunks("part", fail=True))
        await peer.until(lambda p: "stream.abort" in _kinds(p))
        assert peer.frames[-1]["detail"] == "the sender sent garbage"
    assert (await service.session("sf")).info.last_seq == 1


# -- Listen ------------------------------------------------------------------------------


async def test_listen_hands_each_user_message_out_once_with_its_history(
    service: BridgeService,
) -> None:
    waiting = asyncio.create_task(service.listen("l", timeout=5))
    posted = await service.post("l", _user("question"))
    listened = await asyncio.wait_for(waiting, 5)
    assert listened is not None and listened.message == posted
    assert [m.id for m in listened.history] == [WELCOME_ID] and listened.attempt == 1
    assert await service.listen("l", timeout=0) is None  # handed out already
    await service.release(listened)  # could not be delivered: the next call gets it
    again = await service.listen(None, timeout=0)
    assert again is not None and again.message == posted


async def test_listen_refuses_a_negative_timeout(service: BridgeService) -> None:
    with pytest.raises(InvalidInput):
        await service.listen(None, timeout=-1)


# -- life cycle --------------------------------------------------------------------------


async def test_ready_names_the_store(service: BridgeService) -> None:
    assert await service.ready() == service.store_url == "memory://"


async def test_shutdown_closes_sockets_with_1001_and_answers_listen_calls(
    service: BridgeService,
) -> None:
    peer = Peer()
    waiting = asyncio.create_task(service.listen(None, timeout=60))
    async with service.subscribe("sd", 1, peer.send, peer.close):
        await service.shutdown()
        assert peer.closed is not None and peer.closed[0] == CLOSE_GOING_AWAY
        assert await asyncio.wait_for(waiting, 5) is None
        assert await service.listen(None, timeout=60) is None  # new calls answer at once
        await service.shutdown()  # a second call does nothing more
