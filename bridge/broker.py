"""How events reach the hubs of every bridge instance that serves a session.

One instance: `LocalBroker` hands each event straight to this process's hub. Several
instances: the Redis broker (`bridge.broker_redis`) carries them over pub/sub so that a
message posted on one instance reaches subscribers on all of them. Chosen by store URL.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from bridge.events import ALL_SESSIONS, Event
from bridge.ordering import KeyedLocks
from bridge.settings import Settings

__all__ = ["ALL_SESSIONS", "Broker", "Deliver", "LocalBroker", "open_broker"]

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


def open_broker(url: str, settings: Settings) -> Broker:
    """The broker that goes with the store at `url`."""
    if url.startswith(("redis://", "rediss://")):
        from bridge.broker_redis import RedisBroker  # type: ignore[import-not-found,unused-ignore]

        return RedisBroker(url, settings)  # type: ignore[no-any-return,unused-ignore]
    return LocalBroker()
