"""Per-client token buckets for publishing; off unless a rate is configured."""

from __future__ import annotations

import time
from collections import OrderedDict

from bridge.errors import RateLimited

__all__ = ["RateLimiter"]


class RateLimiter:
    """`take(client)` spends one token of that client's bucket or raises `RateLimited`.

    Buckets refill at `rate` per second up to `burst`. At most `max_clients` buckets are
    kept (least recently used dropped), so a flood of addresses cannot grow memory.
    """

    def __init__(self, rate: float, burst: int, max_clients: int = 10_000) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._max = max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    @property
    def enabled(self) -> bool:
        """True when a rate is configured."""
        return self._rate > 0

    def take(self, client: str) -> None:
        """Spend one token for `client`."""
        if self._rate <= 0:
            return
        now = time.monotonic()
        tokens, last = self._buckets.pop(client, (self._burst, now))
        tokens = min(self._burst, tokens + (now - last) * self._rate)
        if tokens < 1:
            self._buckets[client] = (tokens, now)
            raise RateLimited(
                f"rate limit: {self._rate:g} messages/s per client", (1 - tokens) / self._rate
            )
        self._buckets[client] = (tokens - 1, now)
        if len(self._buckets) > self._max:
            self._buckets.popitem(last=False)
