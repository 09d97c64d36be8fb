"""Listen calls as consumers of a queue: wake-ups only, the queue itself is in storage.

Storage hands each `user` message to exactly one `claim_listen` call. This board only
tells waiting calls that a claim may now succeed; every woken call tries, one wins, the
others wait again. A notification that lands between a failed claim and the wait is not
lost, because a waiter takes the current event *before* it tries to claim.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TypeVar

from bridge.errors import RateLimited

__all__ = ["ListenBoard"]

T = TypeVar("T")


class ListenBoard:
    """Wakes Listen calls when a user message has been stored."""

    def __init__(self, *, max_waiters: int) -> None:
        self._max_waiters = max_waiters
        self._changed = asyncio.Event()
        self._closed = False
        self.waiting = 0

    def close(self) -> None:
        """The bridge is stopping: waiting calls return None (204) now, new ones at once,
        so that shutdown is not held up by long polls."""
        self._closed = True
        self.notify()

    def notify(self) -> None:
        """A user message was stored: wake every waiting call."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait(self, claim: Callable[[], Awaitable[T | None]], timeout: float) -> T | None:
        """Call `claim` until it returns something or `timeout` seconds have passed."""
        if self.waiting >= self._max_waiters:
            raise RateLimited(f"{self.waiting} Listen calls are already waiting", retry_after=1.0)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self.waiting += 1
        try:
            while True:
                changed = self._changed
                found = await claim()
                if found is not None:
                    return found
                remaining = deadline - loop.time()
                if remaining <= 0 or self._closed:
                    return None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), remaining)
        finally:
            self.waiting -= 1
