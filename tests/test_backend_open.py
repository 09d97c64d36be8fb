"""`open_backend`: one URL, read once, gives the store and the broker that goes with it."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bridge.broker import LocalBroker, open_backend
from bridge.broker_redis import RedisBroker
from bridge.errors import InvalidInput
from bridge.settings import Settings
from bridge.storage.memory import MemoryStorage
from bridge.storage.redis import RedisStorage
from bridge.storage.sqlite import SqliteStorage
from tests.redis_support import new_prefix, wipe
from tests.support import ROOT


def test_memory_and_sqlite_pair_their_store_with_the_local_broker(tmp_path: Path) -> None:
    memory = open_backend("memory://", Settings())
    assert isinstance(memory.storage, MemoryStorage) and memory.storage.url == "memory://"
    assert isinstance(memory.broker, LocalBroker)
    url = f"sqlite:///{tmp_path / 'x.db'}"
    sqlite = open_backend(url, Settings(store=url))
    assert isinstance(sqlite.storage, SqliteStorage) and sqlite.storage.url == url
    assert isinstance(sqlite.broker, LocalBroker)


def test_redis_pairs_the_redis_store_with_the_redis_broker() -> None:
    url = "redis://user:s3cret@127.0.0.1:6379/15?prefix=pairing"
    backend = open_backend(url, Settings(store=url))
    assert isinstance(backend.storage, RedisStorage) and isinstance(backend.broker, RedisBroker)
    assert backend.storage.url == "redis://user:***@127.0.0.1:6379/15?prefix=pairing"


@pytest.mark.parametrize("bad", ["postgres://x", "sqlite://", "nothing", "redis:///0"])
def test_unknown_or_malformed_urls_are_refused_before_anything_is_built(bad: str) -> None:
    with pytest.raises(InvalidInput, match="store URL"):
        open_backend(bad, Settings())


def test_the_broker_modules_load_no_store_module_and_memory_loads_no_backend() -> None:
    """The Redis broker shares only the connection helpers with the Redis store; opening
    memory:// imports neither SQLite nor Redis code."""
    probe = (
        "import sys\n"
        "import bridge.broker_redis\n"
        "assert 'bridge.storage.redis' not in sys.modules, 'broker_redis imports the store'\n"
        "assert 'bridge.storage.redis_target' in sys.modules\n"
        "from bridge.broker import open_backend\n"
        "from bridge.settings import Settings\n"
        "open_backend('memory://', Settings())\n"
        "assert 'bridge.storage.sqlite' not in sys.modules, 'memory:// loaded sqlite'\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    name = new_prefix("backend")
    yield name
    await wipe(name)
