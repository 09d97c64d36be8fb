"""The storage backends the contract suite runs against, each opened fresh per test."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from bridge.broker import open_backend
from bridge.settings import Settings
from bridge.storage import Storage
from tests.redis_support import wipe

REDIS_URL = "redis://127.0.0.1:6379/15"
BACKENDS = ["memory", "sqlite", "redis"]


@asynccontextmanager
async def opened(
    kind: str, tmp_path: Path, *, keep: bool = False, **limits: int
) -> AsyncIterator[Storage]:
    """An open store of `kind`, empty the first time per test; closed afterwards and,
    for Redis, wiped unless `keep` (to reopen it within the same test)."""
    if kind == "memory":
        url = "memory://"
    elif kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'contract.db'}"
    else:
        # A key prefix of its own keeps tests apart from each other in the shared Redis.
        prefix = "test-" + hashlib.sha1(str(tmp_path).encode()).hexdigest()[:12]
        url = f"{REDIS_URL}?prefix={prefix}"
    settings = Settings(store=url, **limits)  # type: ignore[arg-type]
    store = open_backend(url, settings).storage
    await store.open()
    try:
        yield store
    finally:
        await store.close()
        if kind == "redis" and not keep:
            await wipe(prefix)  # every key, the epoch and token secret too
