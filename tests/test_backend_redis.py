"""The Redis broker reads stored messages only through the `Storage` interface.

Here the brokers talk over the real Redis but are handed an in-memory store: Redis holds
no message at all, so every message they repair a gap with can only have come from
`Storage.history`, and the seq they start checking from from `Storage.session_info`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from bridge import broker_redis
from bridge.broker_redis import RedisBroker
from bridge.events import Event
from bridge.models import Draft
from bridge.storage.memory import MemoryStorage
from tests.redis_support import Watched, new_prefix, store_url, wipe

pytestmark = pytest.mark.redis

Brokers = tuple[MemoryStorage, RedisBroker, RedisBroker, Watched[Event]]


@pytest.fixture
async def brokers() -> AsyncIterator[Brokers]:
    """A memory store, two started brokers sharing it (a publishes, b watches), and
    what b delivered."""
    prefix = new_prefix("backend")
    url = store_url(prefix)
    store = MemoryStorage()
    a, b = RedisBroker(url, store), RedisBroker(url, store)
    got: Watched[Event] = Watched()
    await a.start(lambda event: None)
    await b.start(got.add)
    try:
        yield store, a, b, got
    finally:
        await a.close()
        await b.close()
        await wipe(prefix)


def _delivered(got: list[Event]) -> list[tuple[int | None, str]]:
    return [(e.seq, e.data["message"]["content"]) for e in got if e.kind == "message"]


async def test_a_gap_is_filled_from_the_store_the_broker_was_given(brokers: Brokers) -> None:
    store, a, b, got = brokers
    await store.append("g", Draft.build("user", "one"), (Draft.build("ai", "hi"),))
    assert await b.presence("g", +1) == 1  # b checks for gaps after seq 2 (session_info)
    await store.append("g", Draft.build("user", "lost"), ())  # stored, never published
    fourth = await store.append("g", Draft.build("user", "four"), ())
    await a.publish(Event.message(fourth.message))
    await got.until(lambda events: len(events) >= 2, 10, "seq 3 filled in, then seq 4")
    assert _delivered(got) == [(3, "lost"), (4, "four")]


async def test_a_long_gap_is_read_in_byte_bounded_pages_each_message_once(
    brokers: Brokers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pages of one message each (the bound is 1 byte): the repair goes on page after
    page up to the event that showed the gap, skipping and repeating nothing."""
    store, a, b, got = brokers
    monkeypatch.setattr(broker_redis, "_FILL_PAGE_BYTES", 1)
    assert await b.presence("long", +1) == 1  # unknown session: gaps counted from seq 0
    for i in range(1, 8):
        await store.append("long", Draft.build("user", f"m{i}"), ())
    eighth = await store.append("long", Draft.build("user", "m8"), ())
    await a.publish(Event.message(eighth.message))
    await got.until(lambda events: len(events) >= 8, 10, "seqs 1..8 on b")
    assert _delivered(got) == [(i, f"m{i}") for i in range(1, 9)]
    # Published late after all, a repaired message is not delivered a second time.
    third = (await store.history("long", after=2, before=4))[0]
    await a.publish(Event.message(third))
    marker = Event.of("long", "presence", subscribers=1)
    await a.publish(marker)  # one channel, one order: it comes after the late one
    await got.until(lambda events: events[-1].kind == "presence", 10, "the marker on b")
    assert _delivered(got) == [(i, f"m{i}") for i in range(1, 9)]
