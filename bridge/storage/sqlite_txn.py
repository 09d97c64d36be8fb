"""One group-commit transaction of the SQLite store, and the writes it applies.

The writer thread shares the GIL with the event loop, and every sqlite3 call gives the GIL
up and takes it back: with the loop busy, each take is a thread switch that stalls the
loop. A statement per message (read the counter, insert, update the counter, savepoints)
made those switches the largest cost of a durable POST. So a transaction keeps the rows
of its appends in memory and inserts up to `_ROWS_PER_INSERT` of them with one multi-row
INSERT, and the next `seq` of a session comes from `SeqCache` (committed values) instead
of a SELECT. A session's last seq is the largest `seq` among its messages: trimming keeps
the newest ones, so nothing else has to be stored or updated.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from typing import Any

from bridge.models import Draft, StoredMessage
from bridge.storage.base import Appended
from bridge.values import value

__all__ = [
    "COLUMNS",
    "Append",
    "Create",
    "Custom",
    "Delete",
    "Reset",
    "SeqCache",
    "Transaction",
    "Write",
]

COLUMNS = "id, session_id, seq, role, content, type, created_at"
# 64 rows x 8 values stays far below SQLite's 32,766 bound variables, and one prepared
# statement per row count (1..64) fits the connection's statement cache.
_ROWS_PER_INSERT = 64
_MESSAGE_VALUES = 8
# The Listen backlog is trimmed when its counter passes a multiple of this.
_BACKLOG_TRIM_EVERY = 100


@value
class Append:
    """Store `draft` as the next message of the session, creating it with `seed` if new."""

    session_id: str
    draft: Draft
    seed: tuple[Draft, ...]


@value
class Create:
    """Create the session with `seed` unless it exists."""

    session_id: str
    seed: tuple[Draft, ...]


@value
class Delete:
    """Delete one session with its messages and Listen backlog."""

    session_id: str


@value
class Reset:
    """Delete every session."""


Custom = Callable[[sqlite3.Connection], Any]
"""Any other write: runs on the writer connection, inside the group's transaction."""

Write = Append | Create | Delete | Reset | Custom


class SeqCache:
    """The committed last `seq` of recently written sessions, at most `limit` of them.

    Only the writer thread uses it, and only committed values enter it, so a transaction
    that rolls back leaves it right. The oldest entries go first when it is full.
    """

    def __init__(self, limit: int) -> None:
        self._limit = max(1, limit)
        self._seqs: dict[str, int] = {}

    def get(self, session_id: str) -> int | None:
        """The last seq of the session, None if not cached."""
        return self._seqs.get(session_id)

    def update(self, seqs: dict[str, int]) -> None:
        """Record committed values."""
        for session_id, seq in seqs.items():
            self._seqs.pop(session_id, None)  # re-inserted last: the newest survive
            self._seqs[session_id] = seq
        while len(self._seqs) > self._limit:
            del self._seqs[next(iter(self._seqs))]

    def discard(self, session_id: str) -> None:
        """Forget one session (deleted, or its transaction may not commit)."""
        self._seqs.pop(session_id, None)

    def clear(self) -> None:
        """Forget every session."""
        self._seqs.clear()

    def __len__(self) -> int:
        return len(self._seqs)


class Transaction:
    """Applies writes inside one open transaction; `finish` before COMMIT.

    `seqs` holds the last seq of every session this transaction wrote or looked up, to be
    merged into the cache once it has committed.
    """

    def __init__(
        self, conn: sqlite3.Connection, cache: SeqCache, history_limit: int, listen_backlog: int
    ) -> None:
        self._conn = conn
        self._cache = cache
        self._history_limit = history_limit
        self._trim_step = max(1, history_limit // 10)
        self._listen_backlog = listen_backlog
        self.seqs: dict[str, int] = {}
        self._rows: list[Any] = []  # flat values of buffered message rows
        self._backlog: list[Any] = []  # flat (session_id, seq) of buffered user messages
        self._keys: dict[tuple[str, str], StoredMessage] = {}  # keyed rows stored here
        self._trims: list[tuple[str, int]] = []

    # -- applying writes ---------------------------------------------------------------

    def apply(self, write: Write) -> Any:
        """Apply one write; its rows may stay buffered until `finish`."""
        if isinstance(write, Append):
            return self._append(write)
        if isinstance(write, Create):
            if self._last_seq(write.session_id) is not None:
                return None
            return tuple(self._create(write.session_id, write.seed))
        self.finish()  # the others read or delete rows: everything before them goes in first
        if isinstance(write, Delete):
            return self._delete(write.session_id)
        if isinstance(write, Reset):
            self._reset()
            return None
        return write(self._conn)

    def finish(self) -> None:
        """Insert every buffered row and run the trims they call for."""
        self._insert_buffered()
        for session_id, upto in self._trims:
            self._conn.execute(
                "DELETE FROM messages WHERE session_id = ? AND seq <= ?", (session_id, upto)
            )
        self._trims.clear()

    def _append(self, write: Append) -> Appended:
        session_id, draft = write.session_id, write.draft
        last_seq = self._last_seq(session_id)
        stored: list[StoredMessage] = []
        if last_seq is None:
            stored = self._create(session_id, write.seed)
            last_seq = len(stored)
        elif draft.key is not None and (first := self._keyed(session_id, draft.key)):
            return Appended(first, (), True)
        message = self._add(session_id, last_seq + 1, draft)
        stored.append(message)
        return Appended(message, tuple(stored), False)

    def _create(self, session_id: str, seed: Sequence[Draft]) -> list[StoredMessage]:
        self._conn.execute(
            "INSERT INTO sessions (id, created_at) VALUES (?, ?)", (session_id, time.time())
        )
        self.seqs[session_id] = 0
        return [self._add(session_id, seq, d) for seq, d in enumerate(seed, 1)]

    def _add(self, session_id: str, seq: int, draft: Draft) -> StoredMessage:
        message = StoredMessage.from_draft(session_id, seq, draft)
        self._rows += (
            message.id, session_id, seq, draft.role, draft.content, draft.type,
            message.created_at, draft.key,
        )  # fmt: skip
        if draft.role == "user":
            self._backlog += (session_id, seq)
        if draft.key is not None:
            self._keys[(session_id, draft.key)] = message
        self.seqs[session_id] = seq
        if seq > self._history_limit and seq % self._trim_step == 0:
            self._trims.append((session_id, seq - self._history_limit))
        return message

    def _delete(self, session_id: str) -> bool:
        self._conn.execute("DELETE FROM messages WHERE session_id = ?", (session_id,))
        self._conn.execute("DELETE FROM listen_backlog WHERE session_id = ?", (session_id,))
        found = self._conn.execute("DELETE FROM sessions WHERE id = ?", (session_id,)).rowcount
        self._forget(session_id)
        return found > 0

    def _reset(self) -> None:
        for table in ("messages", "listen_backlog", "sessions"):
            self._conn.execute(f"DELETE FROM {table}")
        self.seqs.clear()
        self._cache.clear()
        self._keys.clear()

    def _forget(self, session_id: str) -> None:
        # Gone now: the next lookup reads the database (and finds nothing); if this
        # transaction rolls back, it finds the session again.
        self._cache.discard(session_id)
        self.seqs.pop(session_id, None)
        self._keys = {k: m for k, m in self._keys.items() if k[0] != session_id}

    # -- lookups -----------------------------------------------------------------------

    def _last_seq(self, session_id: str) -> int | None:
        """The session's last seq at this point of the transaction; None if it is new."""
        if session_id in self.seqs:
            return self.seqs[session_id]
        cached = self._cache.get(session_id)
        if cached is not None:
            return cached
        row = self._conn.execute(
            "SELECT (SELECT MAX(seq) FROM messages WHERE session_id = ?) FROM sessions"
            " WHERE id = ?",
            (session_id, session_id),
        ).fetchone()
        if row is None:
            return None
        self.seqs[session_id] = row[0] or 0
        return self.seqs[session_id]

    def _keyed(self, session_id: str, key: str) -> StoredMessage | None:
        found = self._keys.get((session_id, key))
        if found is not None:
            return found
        row = self._conn.execute(
            f"SELECT {COLUMNS} FROM messages WHERE session_id = ? AND key = ?", (session_id, key)
        ).fetchone()
        return StoredMessage(*row) if row else None

    # -- bulk inserts --------------------------------------------------------------------

    def _insert_buffered(self) -> None:
        rows, self._rows = self._rows, []
        step = _ROWS_PER_INSERT * _MESSAGE_VALUES
        for start in range(0, len(rows), step):
            chunk = rows[start : start + step]
            self._conn.execute(_MESSAGE_SQL[len(chunk) // _MESSAGE_VALUES], chunk)
        backlog, self._backlog = self._backlog, []
        for start in range(0, len(backlog), 2 * _ROWS_PER_INSERT):
            chunk = backlog[start : start + 2 * _ROWS_PER_INSERT]
            count = len(chunk) // 2
            cur = self._conn.execute(_BACKLOG_SQL[count], chunk)
            last = cur.lastrowid or 0
            if last // _BACKLOG_TRIM_EVERY != (last - count) // _BACKLOG_TRIM_EVERY:
                self._conn.execute(
                    "DELETE FROM listen_backlog WHERE n <= ?", (last - self._listen_backlog,)
                )


def _placeholders(rows: int, width: int) -> str:
    one = "(" + ", ".join("?" * width) + ")"
    return ", ".join([one] * rows)


_MESSAGE_SQL = tuple(
    "INSERT INTO messages (id, session_id, seq, role, content, type, created_at, key) VALUES "
    + _placeholders(n, _MESSAGE_VALUES)
    for n in range(_ROWS_PER_INSERT + 1)
)
_BACKLOG_SQL = tuple(
    "INSERT INTO listen_backlog (session_id, seq) VALUES " + _placeholders(n, 2)
    for n in range(_ROWS_PER_INSERT + 1)
)
