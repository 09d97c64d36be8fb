"""What the Redis store does beyond the shared contract: URLs, errors, bounds, layout."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
import redis.exceptions

from bridge.broker import open_backend
from bridge.errors import InvalidInput, StorageUnavailable
from bridge.models import Draft
from bridge.settings import Settings
from bridge.storage.redis import RedisStorage, redis_errors
from tests.redis_support import REDIS, new_prefix, store_url, wipe
from tests.support import free_port

pytestmark = pytest.mark.redis


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    name = new_prefix("store")
    yield name
    await wipe(name)


async def _open(prefix: str, **kwargs: int) -> RedisStorage:
    url = store_url(prefix)
    store = RedisStorage(url, Settings(store=url, **kwargs))  # type: ignore[arg-type]
    await store.open()
    return store


def test_url_hides_the_password_and_keeps_the_prefix() -> None:
    url = "redis://user:s3cret@cache.internal:6380/2?prefix=chat"
    store = open_backend(url, Settings(store=url)).storage
    assert store.url == "redis://user:***@cache.internal:6380/2?prefix=chat"
    assert "s3cret" not in store.url
    plain = RedisStorage("redis://127.0.0.1:6379/0", Settings())
    assert plain.url == "redis://127.0.0.1:6379/0" and plain.prefix == "bridge"


@pytest.mark.parametrize(
    "url",
    ["redis://127.0.0.1/0?prefix=a:b", "redis://127.0.0.1/0?prefix=", "redis:///0",
     "redis://127.0.0.1/0?no_such_option=1", "redis://127.0.0.1/x",
     "redis://127.0.0.1/0?socket_timeout=soon"],
)
def test_bad_urls_are_refused_with_a_reason(url: str) -> None:
    with pytest.raises(InvalidInput, match="bad"):
        RedisStorage(url, Settings())


async def test_unreachable_redis_is_storage_unavailable() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0?prefix=nobody"
    store = RedisStorage(url, Settings(store=url))
    with pytest.raises(StorageUnavailable, match=r"cannot reach redis at redis://127\.0\.0\.1"):
        await store.open()


def test_error_mapping_names_the_cause() -> None:
    cases = [
        (redis.exceptions.ResponseError("OOM command not allowed when used memory > "
                                        "'maxmemory'."), "out of memory"),
        (redis.exceptions.ResponseError("READONLY You can't write against a read only "
                                        "replica."), "read-only replica"),
        (redis.exceptions.TimeoutError("Timeout reading from socket"), "did not answer in time"),
        (redis.exceptions.ConnectionError("Connection refused"), "cannot reach redis"),
    ]
    for error, text in cases:
        with pytest.raises(StorageUnavailable, match=text), redis_errors("redis://h", "x"):
            raise error


async def test_out_of_memory_is_storage_unavailable_and_stores_nothing(prefix: str) -> None:
    store = await _open(prefix)
    admin = aioredis.Redis.from_url(REDIS)
    try:
        await store.append("oom", Draft.build("user", "before"), ())
        old = await admin.config_get("maxmemory-policy")
        old_limit = (await admin.config_get("maxmemory"))["maxmemory"]
        used = int((await admin.info("memory"))["used_memory"])
        try:
            # Only for this moment: a limit below what Redis holds already.
            await admin.config_set("maxmemory", max(1, used // 2))
            await admin.config_set("maxmemory-policy", "noeviction")
            with pytest.raises(StorageUnavailable, match="out of memory"):
                await store.append("oom", Draft.build("user", "x" * 10_000), ())
        finally:
            await admin.config_set("maxmemory", str(old_limit))
            await admin.config_set("maxmemory-policy", str(old["maxmemory-policy"]))
        history = await store.history("oom")
        assert [m.content for m in history] == ["before"]
        info = await store.session_info("oom")
        assert info is not None and info.last_seq == 1
    finally:
        await admin.aclose()
        await store.close()


async def test_idempotency_keys_are_forgotten_with_trimmed_messages(prefix: str) -> None:
    store = await _open(prefix, history_limit=10)
    admin = aioredis.Redis.from_url(REDIS)
    try:
        for i in range(40):
            await store.append("k", Draft.build("ai", str(i), key=f"key-{i}"), ())
        kept = await admin.zcard(f"{prefix}:s:k:keys")
        assert 10 <= kept <= 12  # bounded like the history, not one key per message ever
        again = await store.append("k", Draft.build("ai", "0", key="key-0"), ())
        assert not again.duplicate and again.message.seq == 41
        recent = await store.append("k", Draft.build("ai", "39", key="key-39"), ())
        assert recent.duplicate and recent.message.seq == 40
    finally:
        await admin.aclose()
        await store.close()


async def test_listen_backlog_is_bounded_per_session_and_keeps_the_newest(prefix: str) -> None:
    store = await _open(prefix, listen_backlog_per_session=3)
    admin = aioredis.Redis.from_url(REDIS)
    try:
        for i in range(8):
            await store.append(f"b{i % 2}", Draft.build("user", str(i)), ())
        # Both the global order and each session's list hold 3 per session, no strays.
        assert await admin.zcard(f"{prefix}:listen") == 6
        assert await admin.lrange(f"{prefix}:s:b0:listen", 0, -1) == [b"2", b"3", b"4"]
        claimed = []
        while (m := (await store.claim_listen(None)).claimed) is not None:
            claimed.append(m.message.content)
        assert claimed == ["2", "3", "4", "5", "6", "7"]
        for session in ("b0", "b1"):
            assert (await store.claim_listen(session)).claimed is None
    finally:
        await admin.aclose()
        await store.close()


async def test_two_stores_on_one_prefix_share_seqs_and_claims(prefix: str) -> None:
    a, b = await _open(prefix), await _open(prefix)
    try:
        assert a.epoch == b.epoch
        results = await asyncio.gather(
            *(s.append("shared", Draft.build("user", f"m{i}"), ())
              for i, s in enumerate([a, b] * 25))
        )
        assert sorted(r.message.seq for r in results) == list(range(1, 51))
        claims = await asyncio.gather(*(s.claim_listen("shared") for s in [a, b] * 30))
        got = [c.claimed.message.seq for c in claims if c.claimed is not None]
        assert sorted(got) == list(range(1, 51))  # each exactly once, none lost
    finally:
        await a.close()
        await b.close()


async def test_a_new_session_after_delete_has_a_new_birth(prefix: str) -> None:
    store = await _open(prefix)
    try:
        await store.append("again", Draft.build("user", "x"), ())
        first = await store.session_info("again")
        assert await store.delete_session("again")
        await store.append("again", Draft.build("user", "y"), ())
        second = await store.session_info("again")
        assert first is not None and second is not None
        assert second.created_at > first.created_at and second.last_seq == 1
    finally:
        await store.close()


async def test_an_epoch_lost_with_redis_data_is_renewed_on_ping(prefix: str) -> None:
    store = await _open(prefix)
    admin = aioredis.Redis.from_url(REDIS)
    try:
        old = store.epoch
        await store.ping()
        assert store.epoch == old  # stable while Redis keeps it
        await admin.delete(f"{prefix}:epoch")  # what a restart without persistence does
        await store.ping()
        assert store.epoch and store.epoch != old
        assert (await admin.get(f"{prefix}:epoch")).decode() == store.epoch
    finally:
        await admin.aclose()
        await store.close()


async def test_instances_on_one_prefix_share_the_token_secret_and_restore_it(
    prefix: str,
) -> None:
    a, b = await _open(prefix), await _open(prefix)
    admin = aioredis.Redis.from_url(REDIS)
    try:
        first, second = await asyncio.gather(a.token_secret(), b.token_secret())
        assert first == second and len(first) == 32
        await admin.delete(f"{prefix}:token_secret")  # Redis lost its data
        await a.ping()  # the instance that notices puts back the secret it signs with
        c = await _open(prefix)
        try:
            assert await c.token_secret() == first
        finally:
            await c.close()
    finally:
        await admin.aclose()
        await a.close()
        await b.close()


T0 = 1_000_000.0  # the store clock of the lease tests: `now` is passed, nobody sleeps


async def test_an_instance_takes_over_the_lease_of_one_that_died(prefix: str) -> None:
    died, alive = await _open(prefix, listen_lease_s=10), await _open(prefix, listen_lease_s=10)
    try:
        await alive.append("s", Draft.build("user", "asked"), ())
        taken = (await died.claim_listen(None, T0)).claimed
        assert taken is not None and taken.attempt == 1
        await died.close()  # its run, and its timer, die with it
        assert (await alive.claim_listen("s", T0 + 5)).claimed is None  # still leased
        again = (await alive.claim_listen(None, T0 + 10)).claimed
        assert again is not None and (again.message, again.attempt) == (taken.message, 2)
    finally:
        await alive.close()


async def test_answers_deletes_and_resets_leave_no_lease_keys(prefix: str) -> None:
    store = await _open(prefix, listen_lease_s=10)
    admin = aioredis.Redis.from_url(REDIS)
    try:
        for session in ("a", "b", "c"):
            await store.append(session, Draft.build("user", "q"), ())
            await store.append(session, Draft.build("user", "q2"), ())
            assert (await store.claim_listen(session, T0)).claimed is not None
        assert await admin.zcard(f"{prefix}:leases") == 3
        assert await admin.hgetall(f"{prefix}:s:a:tries") == {b"1": b"1"}
        await store.append("a", Draft.build("ai", "answer"), ())
        assert not await admin.exists(f"{prefix}:s:a:leases", f"{prefix}:s:a:tries")
        assert await admin.zrange(f"{prefix}:leases", 0, -1) == [b"b 1", b"c 1"]
        await store.delete_session("b")
        assert not await admin.exists(f"{prefix}:s:b:leases", f"{prefix}:s:b:tries")
        assert await admin.zrange(f"{prefix}:leases", 0, -1) == [b"c 1"]
        await store.reset()
        left = [k async for k in admin.scan_iter(match=f"{prefix}:*")]
        assert sorted(left) == [f"{prefix}:epoch".encode()]
    finally:
        await admin.aclose()
        await store.close()
