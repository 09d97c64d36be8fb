"""ListenBoard wake-ups and KeyedLocks, in process."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from bridge.errors import RateLimited
from bridge.listen import ListenBoard
from bridge.ordering import KeyedLocks


async def _until(condition: Callable[[], bool]) -> None:
    """Let other tasks run until `condition` holds (bounded)."""
    async with asyncio.timeout(5):
        while not condition():
            await asyncio.sleep(0)  # poll: one loop iteration


async def test_waiters_woken_each_item_claimed_once() -> None:
    board = ListenBoard(max_waiters=10)
    queue: list[int] = []

    async def claim() -> int | None:
        return queue.pop(0) if queue else None

    waiters = [asyncio.create_task(board.wait(claim, 5)) for _ in range(3)]
    await _until(lambda: board.waiting == 3)  # all parked
    for item in (1, 2, 3):
        queue.append(item)
        board.notify()
    assert sorted(await asyncio.gather(*waiters)) == [1, 2, 3]


async def test_timeout_returns_none_and_limit_refuses() -> None:
    board = ListenBoard(max_waiters=1)

    async def nothing() -> None:
        return None

    parked = asyncio.create_task(board.wait(nothing, 0.2))
    await _until(lambda: board.waiting == 1)
    with pytest.raises(RateLimited):
        await board.wait(nothing, 1)
    assert await parked is None and board.waiting == 0


async def test_keyed_locks_serialise_per_key_and_forget_idle_keys() -> None:
    locks = KeyedLocks()
    order: list[str] = []

    async def work(key: str, tag: str, gate: asyncio.Event | None = None) -> None:
        async with locks(key):
            order.append(f"{tag}+")
            if gate is not None:
                await gate.wait()
            order.append(f"{tag}-")

    gate = asyncio.Event()
    first = asyncio.create_task(work("k", "a", gate))
    await _until(lambda: "a+" in order)  # "a" holds the lock
    second = asyncio.create_task(work("k", "b"))
    other = asyncio.create_task(work("j", "c"))
    await other  # another key is not held up
    gate.set()
    await asyncio.gather(first, second)
    assert order.index("a-") < order.index("b+") and "c-" in order
    assert len(locks) == 0


async def test_keyed_locks_forget_a_waiter_cancelled_before_its_turn() -> None:
    locks = KeyedLocks()
    held = asyncio.Event()
    release = asyncio.Event()

    async def holder() -> None:
        async with locks("k"):
            held.set()
            await release.wait()

    async def waiter() -> None:
        async with locks("k"):
            raise AssertionError("a cancelled waiter never gets the lock")

    first = asyncio.create_task(holder())
    await held.wait()
    second = asyncio.create_task(waiter())
    await _until(lambda: locks._locks["k"][1] == 2)  # the waiter is queued
    second.cancel()
    with pytest.raises(asyncio.CancelledError):
        await second
    release.set()
    await first
    assert len(locks) == 0
    async with locks("k"):  # the key is usable again
        assert len(locks) == 1
