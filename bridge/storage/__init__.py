"""Storage backends behind one interface, chosen by URL scheme (imports are lazy).

memory://                      this process only
sqlite:///relative/path.db     a file relative to the working directory
sqlite:////absolute/path.db    an absolute path
redis://host:port/db           shared by several bridge instances
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from bridge.errors import InvalidInput
from bridge.settings import Settings
from bridge.storage.base import Appended, Claimed, DroppedLease, ListenClaim, Storage

__all__ = ["Appended", "Claimed", "DroppedLease", "ListenClaim", "Storage", "open_storage"]


def open_storage(url: str, settings: Settings) -> Storage:
    """Build (not yet open) the store named by `url`; raise `InvalidInput` if unknown."""
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        from bridge.storage.memory import MemoryStorage

        return MemoryStorage(
            history_limit=settings.history_limit,
            listen_backlog_per_session=settings.listen_backlog_per_session,
            sessions_max=settings.sessions_max,
            listen_lease_s=settings.listen_lease_s,
            listen_attempts_max=settings.listen_attempts_max,
        )
    if scheme == "sqlite":
        if not url.startswith("sqlite:///") or len(url) <= len("sqlite:///"):
            raise InvalidInput(
                f"bad store URL {url!r}: use sqlite:///relative.db or sqlite:////abs/path.db"
            )
        from bridge.storage.sqlite import SqliteStorage

        return SqliteStorage(
            Path(url[len("sqlite:///") :]),
            history_limit=settings.history_limit,
            listen_backlog_per_session=settings.listen_backlog_per_session,
            sessions_max=settings.sessions_max,
            listen_lease_s=settings.listen_lease_s,
            listen_attempts_max=settings.listen_attempts_max,
            synchronous=settings.sqlite_synchronous,
            batch_max=settings.commit_batch_max,
            busy_timeout_ms=settings.sqlite_busy_timeout_ms,
        )
    if scheme in ("redis", "rediss"):
        from bridge.storage.redis import RedisStorage  # type: ignore[import-not-found,unused-ignore]

        return RedisStorage(url, settings)  # type: ignore[no-any-return,unused-ignore]
    raise InvalidInput(f"unknown store URL {url!r}: use memory://, sqlite:///path.db or redis://")
