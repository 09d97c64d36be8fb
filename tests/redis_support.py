"""Helpers for tests against the real Redis on 127.0.0.1:6379 (db 15, a prefix per test)."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import redis.asyncio as aioredis

from tests.support import stop_process, wait_until

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


class RedisServer:
    """A private `redis-server` process on a free port, for tests that stop and restart
    the store under a bridge (never the shared Redis on 6379). Nothing is persisted."""

    def __init__(self, port: int, log_path: Path) -> None:
        self.port = port
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        cmd = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
               "--save", "", "--appendonly", "no"]  # fmt: skip
        with self.log_path.open("ab") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=log)
        wait_until(self._answers, timeout, f"redis-server on port {self.port} ({self.log_path})")
        return self

    def _answers(self) -> bool:
        import redis

        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"redis-server exited:\n{self.log_path.read_text()[-2000:]}")
        client = redis.Redis(port=self.port, socket_connect_timeout=1, socket_timeout=1)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def stop(self) -> None:
        """SIGTERM and wait (SIGKILL after 10 s): the port refuses connections after this."""
        stop_process(self.proc)
