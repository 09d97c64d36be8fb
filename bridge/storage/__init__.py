"""Storage backends behind one interface (`Storage`, in `bridge.storage.base`).

memory://                      this process only (`memory`)
sqlite:///relative/path.db     a file relative to the working directory (`sqlite`)
sqlite:////absolute/path.db    an absolute path
redis://host:port/db           shared by several bridge instances (`redis`)

A URL is read in one place, `bridge.broker.open_backend`, which builds the store and the
broker that goes with it. This package knows nothing of brokers.
"""

from __future__ import annotations

from bridge.storage.base import Appended, Claimed, DroppedLease, ListenClaim, Storage

__all__ = ["Appended", "Claimed", "DroppedLease", "ListenClaim", "Storage"]
