"""Listen calls as consumers of a queue: wake-ups only, the queue itself is in storage.

Storage hands each `user` message to exactly one `claim_listen` call. This board tells
waiting calls when a claim may now succeed, and whom to tell:

- `notify(session_id)` wakes one waiter that can take a message of that session (one
  waiting for that session, or for any), the oldest first; the others sleep on. With
  several instances each instance hears the message and wakes one of its own waiters:
  the store's claim decides between them, and a woken waiter that finds nothing (another
  took it) waits again. The service also notifies when a Listen lease it granted runs
  out, so that the unanswered message reaches a call already waiting (no new message
  would wake it); the woken call's claim, at a later clock reading than the lease's
  deadline, finds the lease run out and takes the message again.
- A wake-up is never lost: a waiter is queued before its first claim (a notification
  during that claim makes it claim again), and a waiter that leaves with a wake-up it has
  not spent on a claim (cancelled, timed out, shut down, or it took another session's
  message) hands the wake-up to the next eligible waiter. So no message sits unclaimed
  while a waiter that could take it waits.
- Cancellation (the HTTP client hung up) is safe: a waiter cancelled while it waits
  leaves without claiming; one cancelled while its claim runs lets the claim finish and
  gives a message it claimed back to the store (`release`), whence the next waiter takes it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from bridge.errors import RateLimited

__all__ = ["Claimable", "ListenBoard"]

log = logging.getLogger("bridge")


class Claimable(Protocol):
    """What a claim returns: something of one session (a `StoredMessage`)."""

    @property
    def session_id(self) -> str: ...


T = TypeVar("T", bound=Claimable)


class _Waiter:
    """One Listen call inside `ListenBoard.wait`."""

    __slots__ = ("future", "order", "queued", "session_id", "wake")

    def __init__(self, session_id: str | None, order: int) -> None:
        self.session_id = session_id  # None: any session
        self.order = order  # arrival: older waiters are woken first
        self.queued = False
        # The session of a wake-up not yet spent on a claim; a waiter holding one is not
        # queued, so that the next notification goes to another waiter.
        self.wake: str | None = None
        self.future: asyncio.Future[None] | None = None  # set while it sleeps


class ListenBoard:
    """Wakes Listen calls when a user message has been stored, one per message."""

    def __init__(self, *, max_waiters: int) -> None:
        self._max_waiters = max_waiters
        # Queued waiters per session they wait for (None: any), oldest first. An
        # OrderedDict pops its first entry in O(1) and drops any entry in O(1).
        self._queues: dict[str | None, OrderedDict[int, _Waiter]] = {}
        self._order = itertools.count()
        self._live = 0
        self._closed = False
        self._giving_back: set[asyncio.Task[None]] = set()

    @property
    def waiting(self) -> int:
        """Listen calls inside `wait` now (the cap counts these, and only these)."""
        return self._live

    def close(self) -> None:
        """The bridge is stopping: waiting calls return None (204) now, new ones at once,
        so that shutdown is not held up by long polls. A claim under way finishes."""
        self._closed = True
        for queue in list(self._queues.values()):
            for waiter in list(queue.values()):
                self._dequeue(waiter)
                self._resolve(waiter)

    def notify(self, session_id: str) -> None:
        """A user message of `session_id` was stored (here or on another instance): wake
        the oldest waiter that can take it, if any."""
        own = self._queues.get(session_id)
        anyq = self._queues.get(None)
        first = next(iter(own.values())) if own else None
        other = next(iter(anyq.values())) if anyq else None
        if first is None or (other is not None and other.order < first.order):
            first = other
        if first is None:
            return
        self._dequeue(first)
        first.wake = session_id
        self._resolve(first)

    async def wait(
        self,
        session_id: str | None,
        claim: Callable[[], Awaitable[T | None]],
        release: Callable[[T], Awaitable[None]],
        timeout: float,
    ) -> T | None:
        """Claim a message of `session_id` (None: any session): at once if there is one,
        else when woken, until `timeout` seconds have passed (then None).

        `claim` takes the oldest message for this call from the store; `release` gives
        one back (`Storage.release_listen`) if this call is cancelled while its claim
        runs. Raise `RateLimited` if `max_waiters` calls are already waiting.
        """
        if self._closed:
            return None
        if self._live >= self._max_waiters:
            raise RateLimited(f"{self._live} Listen calls are already waiting", retry_after=1.0)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        waiter = _Waiter(session_id, next(self._order))
        handoff: list[str] = []  # wake-ups this call spent but did not use up
        self._live += 1
        try:
            self._enqueue(waiter, front=False)
            while not self._closed:
                spent, waiter.wake = waiter.wake, None
                if not waiter.queued:  # woken: back in line (at the front: it is the oldest)
                    self._enqueue(waiter, front=True)
                try:
                    found = await self._claim(claim, release, spent)
                except Exception:  # the store failed: the message may still be there
                    handoff += [spent] if spent is not None else []
                    raise
                if found is not None:
                    if spent is not None and found.session_id != spent:
                        handoff.append(spent)  # it took another session's message instead
                    return found
                if waiter.wake is not None:
                    continue  # woken while claiming: that message may be there now
                remaining = deadline - loop.time()
                if remaining <= 0 or self._closed:
                    return None
                waiter.future = loop.create_future()
                try:
                    async with asyncio.timeout(remaining):
                        await waiter.future
                except TimeoutError:
                    pass
                finally:
                    waiter.future = None
                if waiter.wake is None:  # timed out, or shut down
                    return None
            return None
        finally:
            self._live -= 1
            self._dequeue(waiter)
            if waiter.wake is not None:  # woken, then left before claiming
                handoff.append(waiter.wake)
            for pending in handoff:  # each to the next waiter that can use it
                self.notify(pending)

    async def _claim(
        self,
        claim: Callable[[], Awaitable[T | None]],
        release: Callable[[T], Awaitable[None]],
        spent: str | None,
    ) -> T | None:
        # Shielded: a claim that has begun finishes even if the caller is cancelled, so
        # that what it took from the store is given back rather than dropped.
        task = asyncio.ensure_future(claim())
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(lambda done: self._give_back(done, release, spent))
            raise

    def _give_back(
        self,
        done: asyncio.Future[T | None],
        release: Callable[[T], Awaitable[None]],
        spent: str | None,
    ) -> None:
        """The claim of a cancelled call has finished: return what it took to the store,
        then wake a waiter for it (the message and the wake-up the claim had spent)."""
        if done.cancelled() or done.exception() is not None:
            if spent is not None:
                self.notify(spent)
            return
        found = done.result()
        if found is None:
            return  # the message that woke it is gone; nothing to hand on
        task = asyncio.ensure_future(self._release(found, release, spent))
        self._giving_back.add(task)
        task.add_done_callback(self._giving_back.discard)

    async def _release(
        self, found: T, release: Callable[[T], Awaitable[None]], spent: str | None
    ) -> None:
        try:
            await release(found)
        except Exception:  # the store failed: the message is lost, as a crash would lose it
            log.exception("a Listen message claimed by a cancelled call was not given back")
            return
        self.notify(found.session_id)
        if spent is not None and spent != found.session_id:
            self.notify(spent)

    # -- queues ----------------------------------------------------------------------

    def _enqueue(self, waiter: _Waiter, *, front: bool) -> None:
        queue = self._queues.setdefault(waiter.session_id, OrderedDict())
        queue[waiter.order] = waiter
        if front:
            queue.move_to_end(waiter.order, last=False)
        waiter.queued = True

    def _dequeue(self, waiter: _Waiter) -> None:
        if not waiter.queued:
            return
        waiter.queued = False
        queue = self._queues[waiter.session_id]
        del queue[waiter.order]
        if not queue:  # no empty queue per session ever waited on is kept
            del self._queues[waiter.session_id]

    @staticmethod
    def _resolve(waiter: _Waiter) -> None:
        future = waiter.future
        if future is not None and not future.done():
            future.set_result(None)
