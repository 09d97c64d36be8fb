"""`RedisBroker` in process, two instances on one prefix: fan-out, locks, presence, gaps."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from bridge import broker_redis
from bridge.broker_redis import RedisBroker
from bridge.errors import StorageUnavailable
from bridge.events import Event
from bridge.models import Draft
from bridge.settings import Settings
from bridge.storage.redis import RedisStorage
from tests.redis_support import REDIS, Watched, new_prefix, store_url, wipe
from tests.support import ROOT

pytestmark = pytest.mark.redis


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    name = new_prefix("broker")
    yield name
    await wipe(name)


Pair = tuple[RedisBroker, RedisBroker, Watched[Event], Watched[Event]]


@pytest.fixture
async def store(prefix: str) -> AsyncIterator[RedisStorage]:
    """The Redis store the brokers read history and counters through."""
    url = store_url(prefix)
    opened = RedisStorage(url, Settings(store=url))
    await opened.open()
    yield opened
    await opened.close()


@pytest.fixture
async def pair(prefix: str, store: RedisStorage) -> AsyncIterator[Pair]:
    """Two started brokers on one prefix and what each delivered."""
    url = store_url(prefix)
    a, b = RedisBroker(url, store), RedisBroker(url, store)
    got_a: Watched[Event] = Watched()
    got_b: Watched[Event] = Watched()
    await a.start(got_a.add)
    await b.start(got_b.add)
    try:
        yield a, b, got_a, got_b
    finally:
        await a.close()
        await b.close()


def _seqs(events: list[Event]) -> list[int]:
    return [e.seq for e in events if e.seq is not None]


def _message(session_id: str, seq: int) -> Event:
    return Event(session_id, "message", {"seq": seq, "message": {"seq": seq}}, seq)


async def test_every_instance_gets_every_event_once_in_publish_order(pair: Pair) -> None:
    a, b, got_a, got_b = pair
    events = [Event.of("s", "stream.delta", stream_id="x", delta=str(i)) for i in range(200)]
    for i, event in enumerate(events):
        await (a if i % 3 else b).publish(event)
    await got_a.until(lambda got: len(got) >= 200, 10, "200 events on a")
    await got_b.until(lambda got: len(got) >= 200, 10, "200 events on b")
    sent = [e.frame for e in events]
    assert [e.frame for e in got_a] == sent
    assert [e.frame for e in got_b] == sent
    # The publisher delivers its own object (not a re-parsed copy), exactly once.
    assert got_a[1] is events[1] and got_b[0] is events[0]
    assert got_b[1] is not events[1] and got_b[1].session_id == "s"


async def test_events_published_under_the_lock_go_out_with_its_release(pair: Pair) -> None:
    a, _, got_a, got_b = pair
    async with a.lock("held"):
        await a.publish(_message("held", 1))
        await a.publish(_message("held", 2))
        await a.publish(Event.of("elsewhere", "presence", subscribers=1))  # not held: at once
        await got_b.until(lambda got: len(got) >= 1, 5, "the other session's event")
        assert [e.session_id for e in got_b] == ["elsewhere"]  # the held ones wait
    await got_a.until(lambda got: len(got) >= 3, 5, "3 events on a")
    await got_b.until(lambda got: len(got) >= 3, 5, "3 events on b")
    assert _seqs(got_a) == [1, 2] and _seqs(got_b) == [1, 2]


async def test_session_lock_excludes_across_instances(pair: Pair) -> None:
    a, b, _, _ = pair
    inside = 0
    most = 0
    order: list[str] = []

    async def critical(broker: RedisBroker, name: str) -> None:
        nonlocal inside, most
        async with broker.lock("locked"):
            inside += 1
            most = max(most, inside)
            await asyncio.sleep(0.002)  # wait-ok: work while holding the lock, not a sync
            order.append(name)
            inside -= 1

    await asyncio.gather(*(critical(a if i % 2 else b, f"{i}") for i in range(40)))
    assert most == 1
    assert len(order) == 40


# A bridge instance that takes a session's lock and then hangs, holding it; the test kills it
# with SIGKILL, so its lock is left to expire after the real LOCK_TTL_MS.
_DYING_HOLDER = """
import asyncio, sys
from bridge.broker_redis import RedisBroker
from bridge.settings import Settings
from bridge.storage.redis import RedisStorage

async def main(url: str, session: str) -> None:
    broker = RedisBroker(url, RedisStorage(url, Settings(store=url)))
    await broker.start(lambda event: None)
    async with broker.lock(session):
        print("held", flush=True)
        await asyncio.Event().wait()

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


async def test_lock_of_a_killed_holder_expires_before_a_waiter_gives_up(
    pair: Pair, prefix: str, tmp_path: Path
) -> None:
    """The real pairing: a dead holder's lock (LOCK_TTL_MS) expires before a waiter's
    LOCK_WAIT_S runs out, so a crash never costs a 503; a lock that is never released
    does cost one, once LOCK_WAIT_S has passed. Both run at once (about LOCK_WAIT_S)."""
    a, b, _, _ = pair
    url = store_url(prefix)
    log_path = tmp_path / "holder.log"
    with log_path.open("wb") as log:
        holder = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _DYING_HOLDER, url, "dead",
            cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=log,
        )  # fmt: skip
    client = aioredis.Redis.from_url(REDIS)
    try:
        line = await asyncio.wait_for(holder.stdout.readline(), 30)  # type: ignore[union-attr]
        assert line == b"held\n", log_path.read_text()
        holder.kill()  # SIGKILL: no release, the lock stays until its TTL runs out
        await holder.wait()
        assert await client.pttl(f"{prefix}:lock:dead") > 0  # still held by the dead one
        # A holder that never lets go (nothing in the bridge sets such a lock: it stands
        # for one renewed forever).
        await client.set(f"{prefix}:lock:stuck", "someone-else", px=60_000)
        order: list[str] = []

        async def take_dead() -> None:
            async with a.lock("dead"):
                order.append("dead lock taken")

        async def take_stuck() -> None:
            with pytest.raises(StorageUnavailable, match="stayed locked"):
                async with b.lock("stuck"):
                    order.append("stuck lock taken")  # pragma: no cover - must not happen
            order.append("stuck lock refused")

        await asyncio.wait_for(asyncio.gather(take_dead(), take_stuck()), 60)
        assert order == ["dead lock taken", "stuck lock refused"]
    finally:
        if holder.returncode is None:
            holder.kill()
            await holder.wait()
        await client.aclose()


async def test_release_wakes_a_waiter_on_another_instance(
    pair: Pair, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b, _, _ = pair
    # Take away the safety-net poll: only the release notice (or its own deadline, after
    # LOCK_WAIT_S) can make the waiter try again.
    monkeypatch.setattr(broker_redis, "_LOCK_POLL_S", 3600.0)
    order: list[str] = []
    taken = asyncio.Event()
    release = asyncio.Event()

    async def holder() -> None:
        async with a.lock("handoff"):
            taken.set()
            await release.wait()
            order.append("a releases")

    async def waiter() -> None:
        async with b.lock("handoff"):
            order.append("b holds")

    hold = asyncio.create_task(holder())
    await asyncio.wait_for(taken.wait(), 5)
    wait = asyncio.create_task(waiter())
    client = aioredis.Redis.from_url(REDIS)
    try:  # b tried, found the lock held, and asked the holder to announce its release
        async with asyncio.timeout(10):
            while not await client.exists(f"{prefix}:lockwait:handoff"):
                await asyncio.sleep(0.01)  # poll interval
    finally:
        await client.aclose()
    assert not wait.done() and order == []  # held by a: b waits
    release.set()
    # Woken by the notice: well before the deadline's last try would have let it in.
    await asyncio.wait_for(wait, broker_redis.LOCK_WAIT_S - 1)
    await hold
    assert order == ["a releases", "b holds"]


async def test_presence_counts_across_instances_and_forgets_dead_ones(
    pair: Pair, prefix: str
) -> None:
    a, b, _, _ = pair
    assert await a.presence("p", +1) == 1
    assert await b.presence("p", +1) == 2
    assert await b.presence("p", +1) == 3
    assert await a.presence("p", 0) == 3
    # Instance a is killed: its heartbeat key expires (deleted here to skip the wait).
    client = aioredis.Redis.from_url(REDIS)
    try:
        await client.delete(f"{prefix}:instance:{a.instance_id}")
    finally:
        await client.aclose()
    assert await b.presence("p", 0) == 2
    assert await b.presence("p", -1) == 1
    assert await b.presence("p", -1) == 0


async def test_a_stored_but_unpublished_message_is_filled_in(pair: Pair, prefix: str) -> None:
    a, b, _, got_b = pair
    url = store_url(prefix)
    store = RedisStorage(url, Settings(store=url))
    await store.open()
    try:
        welcome = (Draft.build("ai", "hi"),)
        first = await store.append("g", Draft.build("user", "one"), welcome)
        assert await b.presence("g", +1) == 1  # a local subscriber: b watches for gaps
        for m in first.stored:
            await a.publish(Event.message(m))
        # An instance stored seq 3 and died before publishing it.
        await store.append("g", Draft.build("user", "lost"), welcome)
        fourth = await store.append("g", Draft.build("user", "four"), welcome)
        await a.publish(Event.message(fourth.message))
        await got_b.until(lambda got: len(_seqs(got)) >= 4, 10, "4 messages on b")
        assert _seqs(got_b) == [1, 2, 3, 4]
        assert got_b[2].data["message"]["content"] == "lost"
    finally:
        await store.close()


async def test_pubsub_reconnects_and_catches_up_from_storage(pair: Pair, prefix: str) -> None:
    a, b, _, got_b = pair
    url = store_url(prefix)
    store = RedisStorage(url, Settings(store=url))
    await store.open()
    client = aioredis.Redis.from_url(REDIS)
    try:
        await b.presence("r", +1)
        first = await store.append("r", Draft.build("user", "before"), ())
        await a.publish(Event.message(first.message))
        await got_b.until(lambda got: 1 in _seqs(got), 10, "seq 1 on b")
        # Cut b's subscription the way a Redis restart or a network blip would.
        listing = await client.client_list(_type="pubsub")
        ids = [c["id"] for c in listing if c["name"] == f"bridge:{prefix}:broker:{b.instance_id}"]
        assert len(ids) == 1
        assert await client.client_kill_filter(_id=ids[0]) == 1
        for content in ("during-1", "during-2"):
            stored = await store.append("r", Draft.build("user", content), ())
            await a.publish(Event.message(stored.message))
        await got_b.until(lambda got: 3 in _seqs(got), 15, "seq 3 on b after reconnect")
        after = await store.append("r", Draft.build("user", "after"), ())
        await a.publish(Event.message(after.message))
        await got_b.until(lambda got: 4 in _seqs(got), 10, "seq 4 on b")
        assert _seqs(got_b) == [1, 2, 3, 4]
    finally:
        await client.aclose()
        await store.close()


async def test_closed_broker_is_quiet(pair: Pair, prefix: str, store: RedisStorage) -> None:
    live, _, got_live, _ = pair
    url = store_url(prefix)
    broker = RedisBroker(url, store)
    got_closed: Watched[Event] = Watched()
    await broker.start(got_closed.add)
    assert await broker.presence("c", +1) == 1
    await broker.close()
    await broker.publish(_message("c", 1))  # dropped, no error
    # Dropped: one channel keeps one order, so anything the closed broker had sent would
    # reach the live instance before the marker published after it.
    await live.publish(Event.of("c", "presence", subscribers=7))
    await got_live.until(lambda got: len(got) >= 1, 5, "the marker on the live instance")
    assert [(e.session_id, e.kind) for e in got_live] == [("c", "presence")]
    assert got_closed == []  # and nothing is delivered to its own hub after close
    assert await broker.presence("c", -1) == 0  # sockets leaving after shutdown
    with pytest.raises(StorageUnavailable, match="shutting down"):
        async with broker.lock("c"):
            pass
    client = aioredis.Redis.from_url(REDIS)
    try:  # its presence and heartbeat are gone at once, not after a TTL
        assert await client.exists(f"{prefix}:instance:{broker.instance_id}") == 0
        assert await client.hget(f"{prefix}:presence:c", broker.instance_id) is None
    finally:
        await client.aclose()


async def test_unreachable_redis_fails_start_with_a_clear_error() -> None:
    from tests.support import free_port

    url = f"redis://127.0.0.1:{free_port()}/0?prefix=nobody"
    broker = RedisBroker(url, RedisStorage(url, Settings(store=url)))
    with pytest.raises(StorageUnavailable, match="cannot reach redis"):
        await broker.start(lambda event: None)
