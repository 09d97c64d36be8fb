"""Reading a session's history in pages bounded by bytes, not by count.

Messages may be up to `max_message_bytes` (256 KiB) each, so a page of a fixed 500 could
hold 128 MiB per reader. Pages here start small and are sized from the largest message
seen so far, so that one reader holds about `budget_bytes` of history at a time whatever
the messages weigh: history replay to a socket and `GET .../messages` both read this way.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from bridge.models import SessionInfo, StoredMessage
from bridge.storage import Storage

__all__ = ["history_pages"]

_FIRST_PAGE = 16
_MAX_PAGE = 500


async def history_pages(
    storage: Storage,
    info: SessionInfo,
    *,
    after: int = 0,
    last: int | None = None,
    budget_bytes: int,
) -> AsyncIterator[list[StoredMessage]]:
    """The messages of `info`'s session with seq > `after` (only the newest `last` of
    them, if given) up to `info.last_seq`, oldest first, in non-empty pages.

    Seqs are contiguous and trimming drops the oldest, so the kept messages are exactly
    `last_seq - message_count < seq <= last_seq`: reading starts there, never walking
    empty ranges of trimmed history."""
    end = info.last_seq
    cursor = max(after, end - info.message_count)
    if last is not None:
        cursor = max(cursor, end - last)
    size = _FIRST_PAGE
    while cursor < end:
        upper = min(cursor + size, end)
        page = await storage.history(
            info.session_id, after=cursor, before=upper + 1, max_bytes=budget_bytes
        )
        cursor = page[-1].seq if page else upper  # a page cut by max_bytes ends early
        if page:
            largest = max(len(m.to_json()) for m in page)
            yield page
            del page  # not held while the next page is read
            size = max(1, min(_MAX_PAGE, budget_bytes // largest))
