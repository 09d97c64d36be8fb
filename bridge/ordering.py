"""Per-key locks that exist only while someone holds or waits for them."""

from __future__ import annotations

import asyncio
from types import TracebackType

__all__ = ["KeyedLocks"]


class KeyedLocks:
    """`async with locks(key):` serialises work per key; memory stays bounded by the
    number of keys in use right now, not by every key ever seen."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    def __len__(self) -> int:
        return len(self._locks)

    def __call__(self, key: str) -> _Hold:
        # A small class, not @asynccontextmanager: every POST takes one, and entering and
        # leaving the generator-based one cost 14 us against 6 us on the bench machine.
        return _Hold(self._locks, key)


class _Hold:
    """One use of a key's lock: counted from entry until exit, so that the last user
    of a key removes it."""

    __slots__ = ("_key", "_lock", "_locks")

    def __init__(self, locks: dict[str, tuple[asyncio.Lock, int]], key: str) -> None:
        self._locks = locks
        self._key = key
        self._lock: asyncio.Lock | None = None

    async def __aenter__(self) -> None:
        lock, users = self._locks.get(self._key) or (asyncio.Lock(), 0)
        self._locks[self._key] = (lock, users + 1)
        self._lock = lock
        try:
            await lock.acquire()
        except BaseException:  # cancelled while waiting: no longer a user
            self._leave()
            raise

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._lock is not None  # entered
        self._lock.release()
        self._leave()

    def _leave(self) -> None:
        lock, users = self._locks[self._key]
        if users == 1:
            del self._locks[self._key]
        else:
            self._locks[self._key] = (lock, users - 1)
