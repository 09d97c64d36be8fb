"""Helpers for tests against the real Redis on 127.0.0.1:6379 (db 15, a prefix per test)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import TypeVar

import redis.asyncio as aioredis

T = TypeVar("T")

REDIS = "redis://127.0.0.1:6379/15"


def new_prefix(tag: str = "t") -> str:
    """A key prefix no other test uses."""
    return f"{tag}-{uuid.uuid4().hex[:10]}"


def store_url(prefix: str) -> str:
    """The store URL of a bridge (or store, or broker) under `prefix`."""
    return f"{REDIS}?prefix={prefix}"


async def wipe(prefix: str) -> None:
    """Delete every key under `prefix` (what a test leaves behind)."""
    client = aioredis.Redis.from_url(REDIS)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*", count=1000)]
        if keys:
            await client.unlink(*keys)
    finally:
        await client.aclose()


def wipe_sync(prefix: str) -> None:
    """`wipe` for synchronous fixtures (no event loop running there)."""
    import redis

    client = redis.Redis.from_url(REDIS)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.unlink(*keys)
    finally:
        client.close()


class Watched(list[T]):
    """A list that wakes its waiters whenever it grows (no polling, no sleeps)."""

    def __init__(self) -> None:
        super().__init__()
        self._grew = asyncio.Event()

    def add(self, item: T) -> None:
        """Append `item` and wake the waiters."""
        self.append(item)
        self._grew.set()

    async def until(self, predicate: Callable[[list[T]], bool], within: float, what: str) -> None:
        """Return once `predicate(self)` holds; fail after `within` seconds."""
        try:
            async with asyncio.timeout(within):
                while not predicate(self):
                    self._grew.clear()
                    await self._grew.wait()
        except TimeoutError:
            raise AssertionError(f"timed out after {within}s waiting for {what}") from None
