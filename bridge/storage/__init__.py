"""Storage backends behind one interface (`Storage`, in `bridge.storage.base`).

memory://                      this process only (`memory`)
sqlite:///relative/path.db     a file relative to the working directory (`sqlite`)
sqlite:////absolute/path.db    an absolute path
redis://host:port/db           shared by several bridge instances (`redis`)

A URL is read in one place, `bridge.broker.open_backend`, which builds the store and the
broker that goes with it. This package knows nothing of brokers.
"""

from __future__ import annotations

from bridge.settings import Settings
from bridge.storage.base import Appended, Claimed, DroppedLease, ListenClaim, Storage

__all__ = ["Appended", "Claimed", "DroppedLease", "ListenClaim", "Storage", "open_storage"]


def open_storage(url: str, settings: Settings) -> Storage:
    """Transitional: the store of `bridge.broker.open_backend(url, settings)`, for
    callers not yet moved to it; raise `InvalidInput` if the URL is unknown."""
    from bridge.broker import open_backend

    return open_backend(url, settings).storage
