"""How events reach the hubs of every bridge instance that serves a session, and the one
place a backend URL is read: `open_backend(url, settings)` builds the store and the
broker that goes with it.

memory://, sqlite:///path.db   the store of `bridge.storage` with `LocalBroker`: one
                               process, each event handed straight to its hub.
redis://host:port/db           the Redis store with `RedisBroker` (`bridge.broker_redis`):
                               several instances share the store, and pub/sub carries
                               each event to all of them.

A broker that needs stored messages (the Redis broker repairs gaps from history) gets
the store itself and asks it through the `Storage` interface, never its keys or tables.
Each backend's modules are imported only when its URL is opened.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from bridge.errors import InvalidInput
from bridge.events import ALL_SESSIONS, Event
from bridge.ordering import KeyedLocks
from bridge.settings import Settings
from bridge.storage.base import Storage
from bridge.values import value

__all__ = [
    "ALL_SESSIONS",
    "Backend",
    "Broker",
    "Deliver",
    "LocalBroker",
    "open_backend",
]

Deliver = Callable[[Event], None]


class Broker(Protocol):
    """Carries events to every instance's hub and counts subscribers across instances."""

    async def start(self, deliver: Deliver) -> None:
        """Begin handing events (this instance's and others') to `deliver`."""
        ...

    async def publish(self, event: Event) -> None:
        """Send `event` to every instance, this one included, in publish order."""
        ...

    async def presence(self, session_id: str, delta: int) -> int:
        """Add `delta` to the session's subscriber count; return the count over all instances."""
        ...

    def lock(self, session_id: str) -> AbstractAsyncContextManager[None]:
        """Held by the service from storing a session's message until it is published, so
        that publish order is `seq` order on every instance."""
        ...

    async def close(self) -> None:
        """Stop delivering and release resources."""
        ...


class LocalBroker:
    """The broker of a single bridge process: a direct call into its hub."""

    def __init__(self) -> None:
        self._deliver: Deliver | None = None
        self._presence: dict[str, int] = {}
        self._locks = KeyedLocks()

    def lock(self, session_id: str) -> AbstractAsyncContextManager[None]:
        return self._locks(session_id)

    async def start(self, deliver: Deliver) -> None:
        self._deliver = deliver

    async def publish(self, event: Event) -> None:
        if self._deliver is not None:
            self._deliver(event)

    async def presence(self, session_id: str, delta: int) -> int:
        count = self._presence.get(session_id, 0) + delta
        if count > 0:
            self._presence[session_id] = count
        else:
            self._presence.pop(session_id, None)
        return max(count, 0)

    async def close(self) -> None:
        self._deliver = None


@value
class Backend:
    """A store and the broker that goes with it, both built (not yet opened or started)
    from one URL by `open_backend`. The caller opens `storage` before starting `broker`,
    and closes the broker first: it may read the store until it is closed."""

    storage: Storage
    broker: Broker


def open_backend(url: str, settings: Settings) -> Backend:
    """Build the store named by `url` and its broker; raise `InvalidInput` if the URL is
    not one of memory://, sqlite:///relative.db, sqlite:////abs/path.db, redis://..."""
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        from bridge.storage.memory import MemoryStorage

        memory = MemoryStorage(**_limits(settings))
        return Backend(memory, LocalBroker())
    if scheme == "sqlite":
        if not url.startswith("sqlite:///") or len(url) <= len("sqlite:///"):
            raise InvalidInput(
                f"bad store URL {url!r}: use sqlite:///relative.db or sqlite:////abs/path.db"
            )
        from bridge.storage.sqlite import SqliteStorage

        sqlite = SqliteStorage(
            Path(url[len("sqlite:///") :]),
            **_limits(settings),
            synchronous=settings.sqlite_synchronous,
            batch_max=settings.commit_batch_max,
            busy_timeout_ms=settings.sqlite_busy_timeout_ms,
        )
        return Backend(sqlite, LocalBroker())
    if scheme in ("redis", "rediss"):
        from bridge.broker_redis import RedisBroker
        from bridge.storage.redis import RedisStorage

        shared = RedisStorage(url, settings)
        return Backend(shared, RedisBroker(url, shared))
    raise InvalidInput(f"unknown store URL {url!r}: use memory://, sqlite:///path.db or redis://")


def _limits(settings: Settings) -> dict[str, Any]:
    """The bounds every store takes from the settings (the Redis store reads them itself)."""
    return {
        "history_limit": settings.history_limit,
        "listen_backlog_per_session": settings.listen_backlog_per_session,
        "sessions_max": settings.sessions_max,
        "listen_lease_s": settings.listen_lease_s,
        "listen_attempts_max": settings.listen_attempts_max,
    }
