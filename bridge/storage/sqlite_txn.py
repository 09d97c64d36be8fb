"""One group-commit transaction of the SQLite store, and the writes it applies.

The writer thread shares the GIL with the event loop, and every sqlite3 call gives the GIL
up and takes it back: with the loop busy, each take is a thread switch that stalls the
loop. A statement per message (read the counter, insert, update the counter, savepoints)
made those switches the largest cost of a durable POST. So a transaction keeps the rows
of its appends in memory and inserts up to `_ROWS_PER_INSERT` of them with one multi-row
INSERT, and the next `seq` of a session comes from `SeqCache` (committed values) instead
of a SELECT. A session's last seq is the largest `seq` among its messages: trimming keeps
the newest ones, so nothing else has to be stored or updated.

The same goes for the two bounds checked on every write: how many unclaimed Listen
entries a session has (its backlog keeps the newest `backlog_per_session`) and how many
sessions the store holds (`sessions_max`) are kept in `WriterState` from committed
transactions; the database is counted only when a number is not known yet. Likewise the
number of outstanding Listen leases per session: an `ai` append acknowledges its session's
leases with one DELETE, and only when that number says there is a lease to delete, so an
answer in a session without leases costs no statement beyond its INSERT.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from typing import Any

from bridge.errors import QuotaExceeded
from bridge.models import Draft, StoredMessage
from bridge.storage.base import Appended, Claimed, DroppedLease, ListenClaim, sessions_quota
from bridge.values import value

__all__ = [
    "COLUMNS",
    "Ack",
    "Append",
    "Claim",
    "Create",
    "Custom",
    "Delete",
    "Limits",
    "Release",
    "Renew",
    "Reset",
    "SeqCache",
    "Transaction",
    "Write",
    "WriterState",
    "message_of",
]

COLUMNS = "id, session_id, seq, role, content, type, created_at, stopped"
# 64 rows x 9 values stays far below SQLite's 32,766 bound variables, and one prepared
# statement per row count (1..64) fits the connection's statement cache.
_ROWS_PER_INSERT = 64
_MESSAGE_VALUES = 9


def message_of(row: Sequence[Any]) -> StoredMessage:
    """A message from a row of `COLUMNS` (`stopped` is stored as 0 or 1)."""
    return StoredMessage(row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7] != 0)


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


@value
class Claim:
    """Take a message for Listen (of one session, or of any if None): a lease that ran
    out by `now` first, else the oldest backlog entry; lease it until `now` + the lease.
    `exclusive`: pass over sessions holding a lease that runs past `now`."""

    session_id: str | None
    now: float
    exclusive: bool = False


@value
class Release:
    """Put a claimed message back at the front of the Listen backlog, dropping its lease."""

    claimed: Claimed


@value
class Ack:
    """Drop the lease of a claimed message answered without an `ai` message."""

    claimed: Claimed


@value
class Renew:
    """Move the deadline of a claimed message's lease to `now` + the lease, if held."""

    claimed: Claimed
    now: float


Custom = Callable[[sqlite3.Connection], Any]
"""Any other write: runs on the writer connection, inside the group's transaction."""

Write = Append | Create | Delete | Reset | Claim | Release | Ack | Renew | Custom


@value
class Limits:
    """The bounds a transaction enforces."""

    history: int
    backlog_per_session: int
    sessions_max: int
    lease_s: float = 300.0  # 0: claims take no lease
    attempts_max: int = 3


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


class WriterState:
    """What the writer thread knows of committed rows, so that an append reads nothing.

    Only committed values enter it (`commit`); after a failed group it is `clear`ed and
    every number is read again when next needed.
    """

    def __init__(self, cache_limit: int) -> None:
        self.seqs = SeqCache(cache_limit)
        self.backlog = SeqCache(cache_limit)  # unclaimed Listen entries per session
        self.leases = SeqCache(cache_limit)  # outstanding Listen leases per session
        self.sessions: int | None = None  # sessions in the store

    def commit(self, txn: Transaction) -> None:
        """Take the numbers of a transaction that has committed."""
        self.seqs.update(txn.seqs)
        self.backlog.update(txn.backlog)
        self.leases.update(txn.leases)
        self.sessions = txn.session_count

    def clear(self) -> None:
        """Forget everything (the file may hold what this process did not write)."""
        self.seqs.clear()
        self.backlog.clear()
        self.leases.clear()
        self.sessions = None


class Transaction:
    """Applies writes inside one open transaction; `finish` before COMMIT.

    `seqs` holds the last seq of every session this transaction wrote or looked up,
    `backlog` the unclaimed Listen entries and `leases` the outstanding Listen leases of
    every session it counted, `session_count` the sessions in the store if known: merged
    into `WriterState` once it has committed.
    A write refused by a bound returns its error (`QuotaExceeded`) instead of raising, so
    that the rest of the group commits; it has stored nothing.
    """

    def __init__(self, conn: sqlite3.Connection, state: WriterState, limits: Limits) -> None:
        self._conn = conn
        self._state = state
        self._cache = state.seqs
        self._history_limit = limits.history
        self._trim_step = max(1, limits.history // 10)
        self._backlog_limit = limits.backlog_per_session
        self._sessions_max = limits.sessions_max
        self._lease_s = limits.lease_s
        self._attempts_max = limits.attempts_max
        self.seqs: dict[str, int] = {}
        self.backlog: dict[str, int] = {}
        self.leases: dict[str, int] = {}
        self.session_count = state.sessions
        self._rows: list[Any] = []  # flat values of buffered message rows
        self._backlog: list[Any] = []  # flat (session_id, seq) of buffered user messages
        self._over: set[str] = set()  # sessions whose backlog may exceed the bound
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
            return self._refusal() or tuple(self._create(write.session_id, write.seed))
        self.finish()  # the others read or delete rows: everything before them goes in first
        if isinstance(write, Delete):
            return self._delete(write.session_id)
        if isinstance(write, Reset):
            self._reset()
            return None
        if isinstance(write, Claim):
            return self._claim(write.session_id, write.now, write.exclusive)
        if isinstance(write, Release):
            self._release(write.claimed)
            return None
        if isinstance(write, Ack):
            self._ack(write.claimed)
            return None
        if isinstance(write, Renew):
            return self._renew(write.claimed, write.now)
        return write(self._conn)

    def finish(self) -> None:
        """Insert every buffered row and run the trims they call for."""
        self._insert_buffered()
        for session_id in self._over:
            # A flood evicts its own session's oldest entries, never another session's:
            # one DELETE per session and transaction, however many messages it brought.
            excess = self.backlog[session_id] - self._backlog_limit
            if excess > 0:
                cur = self._conn.execute(
                    "DELETE FROM listen_backlog WHERE n IN (SELECT n FROM listen_backlog"
                    " WHERE session_id = ? ORDER BY n LIMIT ?)",
                    (session_id, excess),
                )
                self.backlog[session_id] -= cur.rowcount
        self._over.clear()
        for session_id, upto in self._trims:
            self._conn.execute(
                "DELETE FROM messages WHERE session_id = ? AND seq <= ?", (session_id, upto)
            )
        self._trims.clear()

    def _append(self, write: Append) -> Appended | QuotaExceeded:
        session_id, draft = write.session_id, write.draft
        last_seq = self._last_seq(session_id)
        stored: list[StoredMessage] = []
        if last_seq is None:
            if refused := self._refusal():
                return refused
            stored = self._create(session_id, write.seed)
            last_seq = len(stored)
        elif draft.key is not None and (first := self._keyed(session_id, draft.key)):
            return Appended(first, (), True)
        message = self._add(session_id, last_seq + 1, draft)
        stored.append(message)
        return Appended(message, tuple(stored), False)

    def _refusal(self) -> QuotaExceeded | None:
        """The error for one more session if the store is full; counts the sessions only
        when their number is not known (the first creation of this writer)."""
        if self.session_count is None:
            self.session_count = int(
                self._conn.execute("SELECT COUNT(*) FROM sessions").fetchone()[0]
            )
        if self.session_count >= self._sessions_max:
            return sessions_quota(self.session_count)
        return None

    def _create(self, session_id: str, seed: Sequence[Draft]) -> list[StoredMessage]:
        # Only after `_refusal`, which made `session_count` known.
        self._conn.execute(
            "INSERT INTO sessions (id, created_at) VALUES (?, ?)", (session_id, time.time())
        )
        self.session_count = (self.session_count or 0) + 1
        self.seqs[session_id] = 0
        self.backlog[session_id] = 0
        self.leases[session_id] = 0
        return [self._add(session_id, seq, d) for seq, d in enumerate(seed, 1)]

    def _add(self, session_id: str, seq: int, draft: Draft) -> StoredMessage:
        message = StoredMessage.from_draft(session_id, seq, draft)
        self._rows += (
            message.id, session_id, seq, draft.role, draft.content, draft.type,
            message.created_at, draft.key, 1 if draft.stopped else 0,
        )  # fmt: skip
        if draft.role == "user":
            self._backlog += (session_id, seq)
            count = self.backlog[session_id] = self._backlog_count(session_id) + 1
            if count > self._backlog_limit:
                self._over.add(session_id)
        elif draft.role == "ai":
            # An answer acknowledges every lease of its session. The DELETE runs at once:
            # leases are only written by claims and releases, which run at once too, so
            # it sees exactly the leases taken before this message in the group.
            if self._lease_count(session_id):
                self._conn.execute("DELETE FROM listen_leases WHERE session_id = ?", (session_id,))
            self.leases[session_id] = 0
        if draft.key is not None:
            self._keys[(session_id, draft.key)] = message
        self.seqs[session_id] = seq
        if seq > self._history_limit and seq % self._trim_step == 0:
            self._trims.append((session_id, seq - self._history_limit))
        return message

    def _delete(self, session_id: str) -> bool:
        self._conn.execute("DELETE FROM messages WHERE session_id = ?", (session_id,))
        self._conn.execute("DELETE FROM listen_backlog WHERE session_id = ?", (session_id,))
        self._conn.execute("DELETE FROM listen_leases WHERE session_id = ?", (session_id,))
        found = self._conn.execute("DELETE FROM sessions WHERE id = ?", (session_id,)).rowcount
        self._forget(session_id)
        if found and self.session_count is not None:
            self.session_count -= 1
        return found > 0

    def _reset(self) -> None:
        for table in ("messages", "listen_backlog", "listen_leases", "sessions"):
            self._conn.execute(f"DELETE FROM {table}")
        self.seqs.clear()
        self.backlog.clear()
        self.leases.clear()
        self._state.seqs.clear()
        self._state.backlog.clear()
        self._state.leases.clear()
        self._keys.clear()
        self.session_count = 0

    def _forget(self, session_id: str) -> None:
        # Gone now: the next lookup reads the database (and finds nothing); if this
        # transaction rolls back, it finds the session again.
        self._cache.discard(session_id)
        self._state.backlog.discard(session_id)
        self._state.leases.discard(session_id)
        self.seqs.pop(session_id, None)
        self.backlog.pop(session_id, None)
        self.leases.pop(session_id, None)
        self._keys = {k: m for k, m in self._keys.items() if k[0] != session_id}

    # -- the Listen backlog ----------------------------------------------------------------

    def _claim(self, session_id: str | None, now: float, exclusive: bool) -> ListenClaim:
        dropped: list[DroppedLease] = []
        exclusive = exclusive and self._lease_s > 0  # no leases: no session is busy
        if self._lease_s > 0:
            again = self._claim_expired(session_id, now, exclusive, dropped)
            if again is not None:
                return ListenClaim(again, tuple(dropped))
        conditions: list[str] = []
        args: tuple[Any, ...] = ()
        if session_id is not None:
            conditions.append("b.session_id = ?")
            args += (session_id,)
        if exclusive:
            # Entries of busy sessions are passed over (the lease index answers each).
            conditions.append(f"NOT {_BUSY.format(table='b')}")
            args += (now,)
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        while True:
            row = self._conn.execute(
                f"SELECT n, session_id, seq, attempts FROM listen_backlog AS b {where}"
                " ORDER BY n LIMIT 1",
                args,
            ).fetchone()
            if row is None:
                return ListenClaim(None, tuple(dropped))
            self._conn.execute("DELETE FROM listen_backlog WHERE n = ?", (row[0],))
            known = self.backlog.get(row[1], self._state.backlog.get(row[1]))
            if known is not None:
                self.backlog[row[1]] = max(0, known - 1)
            found = self._message(row[1], row[2])
            # A message trimmed from history since is gone for Listen too.
            if found is not None:
                claimed = self._lease(found, row[3] + 1, now, dropped)
                return ListenClaim(claimed, tuple(dropped))

    def _claim_expired(
        self, session_id: str | None, now: float, exclusive: bool, dropped: list[DroppedLease]
    ) -> Claimed | None:
        """Lease again the message whose lease ran out longest ago and has attempts left;
        drop (and report) those that used up theirs, and those whose message is gone.
        `exclusive` passes over the leases with attempts left of busy sessions."""
        conditions = ["l.deadline <= ?"]
        args: tuple[Any, ...] = (now,)
        if session_id is not None:
            conditions.append("l.session_id = ?")
            args += (session_id,)
        if exclusive:
            conditions.append(f"(l.attempts >= ? OR NOT {_BUSY.format(table='l')})")
            args += (self._attempts_max, now)
        where = " AND ".join(conditions)
        while True:
            row = self._conn.execute(
                f"SELECT session_id, seq, attempts FROM listen_leases AS l WHERE {where}"
                " ORDER BY deadline LIMIT 1",
                args,
            ).fetchone()
            if row is None:
                return None
            owner, seq, attempts = row
            found = self._message(owner, seq) if attempts < self._attempts_max else None
            if found is not None:
                self._conn.execute(
                    "UPDATE listen_leases SET deadline = ?, attempts = ?"
                    " WHERE session_id = ? AND seq = ?",
                    (now + self._lease_s, attempts + 1, owner, seq),
                )
                return Claimed(found, attempts + 1)
            self._conn.execute(
                "DELETE FROM listen_leases WHERE session_id = ? AND seq = ?", (owner, seq)
            )
            self._leases_less(owner, 1)
            if attempts >= self._attempts_max:
                dropped.append(DroppedLease(owner, seq, attempts))

    def _lease(
        self, message: StoredMessage, attempt: int, now: float, dropped: list[DroppedLease]
    ) -> Claimed:
        """Record the claim of `message` as attempt `attempt`, until `now` + the lease; a
        session over its bound drops its oldest leases (reported in `dropped`)."""
        if self._lease_s <= 0:
            return Claimed(message, attempt)
        session_id = message.session_id
        count = self._lease_count(session_id) + 1  # counted before the INSERT adds one
        self._conn.execute(
            "INSERT OR REPLACE INTO listen_leases (session_id, seq, deadline, attempts)"
            " VALUES (?, ?, ?, ?)",
            (session_id, message.seq, now + self._lease_s, attempt),
        )
        self.leases[session_id] = count
        if count > self._backlog_limit:
            gone = self._conn.execute(
                "DELETE FROM listen_leases WHERE session_id = ? AND seq IN (SELECT seq FROM"
                " listen_leases WHERE session_id = ? ORDER BY deadline LIMIT ?)"
                " RETURNING seq, attempts",
                (session_id, session_id, count - self._backlog_limit),
            ).fetchall()
            self.leases[session_id] = count - len(gone)
            dropped += [DroppedLease(session_id, seq, attempts) for seq, attempts in gone]
        return Claimed(message, attempt)

    def _release(self, claimed: Claimed) -> None:
        message = claimed.message
        session_id, seq = message.session_id, message.seq
        row = self._conn.execute(
            "SELECT id FROM messages WHERE session_id = ? AND seq = ?", (session_id, seq)
        ).fetchone()
        if row is None or row[0] != message.id:  # trimmed, or a later session's message
            return
        if self._conn.execute(
            "SELECT 1 FROM listen_backlog WHERE session_id = ? AND seq = ?", (session_id, seq)
        ).fetchone():
            return  # released already
        lease = self._conn.execute(
            "SELECT attempts FROM listen_leases WHERE session_id = ? AND seq = ?",
            (session_id, seq),
        ).fetchone()
        if lease is not None:
            if lease[0] != claimed.attempt:  # its lease ran out and it was claimed again
                return
            self._conn.execute(
                "DELETE FROM listen_leases WHERE session_id = ? AND seq = ?", (session_id, seq)
            )
            self._leases_less(session_id, 1)
        count = self._backlog_count(session_id)
        # Below every other entry's number: claimed next, for its session and for any.
        # The attempts before this one still count; this one does not.
        self._conn.execute(
            "INSERT INTO listen_backlog (n, session_id, seq, attempts) VALUES"
            " ((SELECT COALESCE(MIN(n), 1) - 1 FROM listen_backlog), ?, ?, ?)",
            (session_id, seq, claimed.attempt - 1),
        )
        self.backlog[session_id] = count + 1

    def _ack(self, claimed: Claimed) -> None:
        message = claimed.message
        gone = self._conn.execute(
            f"DELETE FROM listen_leases WHERE {_HELD}", _held_args(claimed)
        ).rowcount
        if gone:
            self._leases_less(message.session_id, gone)

    def _renew(self, claimed: Claimed, now: float) -> bool:
        if self._lease_s <= 0:
            return False
        cur = self._conn.execute(
            f"UPDATE listen_leases SET deadline = ? WHERE {_HELD}",
            (now + self._lease_s, *_held_args(claimed)),
        )
        return cur.rowcount > 0

    def _message(self, session_id: str, seq: int) -> StoredMessage | None:
        found = self._conn.execute(
            f"SELECT {COLUMNS} FROM messages WHERE session_id = ? AND seq = ?", (session_id, seq)
        ).fetchone()
        return message_of(found) if found else None

    # -- lookups -----------------------------------------------------------------------

    def _last_seq(self, session_id: str) -> int | None:
        """The session's last seq at this point of the transaction; None if it is new."""
        if session_id in self.seqs:
            return self.seqs[session_id]
        cached = self._cache.get(session_id)
        if cached is not None:
            return cached
        # The backlog and lease counts come along: a session not cached is likely to
        # need them next (a user message, an answer).
        row = self._conn.execute(
            "SELECT (SELECT MAX(seq) FROM messages WHERE session_id = ?),"
            " (SELECT COUNT(*) FROM listen_backlog WHERE session_id = ?),"
            " (SELECT COUNT(*) FROM listen_leases WHERE session_id = ?) FROM sessions"
            " WHERE id = ?",
            (session_id, session_id, session_id, session_id),
        ).fetchone()
        if row is None:
            return None
        self.backlog.setdefault(session_id, row[1])
        self.leases.setdefault(session_id, row[2])
        self.seqs[session_id] = row[0] or 0
        return self.seqs[session_id]

    def _backlog_count(self, session_id: str) -> int:
        """Unclaimed Listen entries of an existing session at this point."""
        count = self.backlog.get(session_id, self._state.backlog.get(session_id))
        if count is None:
            count = int(
                self._conn.execute(
                    "SELECT COUNT(*) FROM listen_backlog WHERE session_id = ?", (session_id,)
                ).fetchone()[0]
            )
            self.backlog[session_id] = count
        return count

    def _lease_count(self, session_id: str) -> int:
        """Outstanding Listen leases of an existing session at this point."""
        count = self.leases.get(session_id, self._state.leases.get(session_id))
        if count is None:
            count = int(
                self._conn.execute(
                    "SELECT COUNT(*) FROM listen_leases WHERE session_id = ?", (session_id,)
                ).fetchone()[0]
            )
            self.leases[session_id] = count
        return count

    def _leases_less(self, session_id: str, gone: int) -> None:
        """`gone` leases of the session were deleted; an unknown count stays unknown
        (counted from the table when next needed, which already lacks them)."""
        known = self.leases.get(session_id, self._state.leases.get(session_id))
        if known is not None:
            self.leases[session_id] = max(0, known - gone)

    def _keyed(self, session_id: str, key: str) -> StoredMessage | None:
        found = self._keys.get((session_id, key))
        if found is not None:
            return found
        row = self._conn.execute(
            f"SELECT {COLUMNS} FROM messages WHERE session_id = ? AND key = ?", (session_id, key)
        ).fetchone()
        return message_of(row) if row else None

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
            self._conn.execute(_BACKLOG_SQL[len(chunk) // 2], chunk)


# Whether the session of a row of `table` holds a lease running past `?` (the claim's now).
_BUSY = (
    "EXISTS (SELECT 1 FROM listen_leases AS busy WHERE busy.session_id = {table}.session_id"
    " AND busy.deadline > ?)"
)
# The lease of a claimed message, if still on the claim's attempt and of that message (its
# seq holds no other message: a session deleted and made anew). Arguments: `_held_args`.
_HELD = (
    "session_id = ? AND seq = ? AND attempts = ? AND NOT EXISTS (SELECT 1 FROM messages"
    " WHERE session_id = ? AND seq = ? AND id != ?)"
)


def _held_args(claimed: Claimed) -> tuple[Any, ...]:
    m = claimed.message
    return (m.session_id, m.seq, claimed.attempt, m.session_id, m.seq, m.id)


def _placeholders(rows: int, width: int) -> str:
    one = "(" + ", ".join("?" * width) + ")"
    return ", ".join([one] * rows)


_MESSAGE_SQL = tuple(
    "INSERT INTO messages (id, session_id, seq, role, content, type, created_at, key, stopped)"
    " VALUES " + _placeholders(n, _MESSAGE_VALUES)
    for n in range(_ROWS_PER_INSERT + 1)
)
_BACKLOG_SQL = tuple(
    "INSERT INTO listen_backlog (session_id, seq) VALUES " + _placeholders(n, 2)
    for n in range(_ROWS_PER_INSERT + 1)
)
