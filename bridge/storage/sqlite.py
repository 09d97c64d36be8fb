"""`sqlite:///path.db`: one embedded file, group commit, durable before the 200.

Writes are queued and a single writer task commits everything queued so far in one
transaction, then resolves the callers: many concurrent POSTs share one fsync, and their
rows go in with a few multi-row INSERTs (`sqlite_txn` says why). If that transaction
fails, each of its writes is retried in a transaction of its own, so that one bad write
fails alone. A write refused by a bound (`sessions_max`) stores nothing and is answered
with its `QuotaExceeded`; the rest of its group commits. Reads use a second connection;
WAL mode lets them run beside the writer. Both connections live in their own one-thread
executors because sqlite3 connections must stay on one thread.
"""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from bridge.errors import BridgeError, StorageUnavailable
from bridge.models import Draft, SessionInfo, StoredMessage, Template
from bridge.storage.base import Appended, Claimed, ListenClaim, check_page, content_bytes
from bridge.storage.sqlite_txn import (
    COLUMNS,
    Ack,
    Append,
    Claim,
    Create,
    Delete,
    Limits,
    Release,
    Renew,
    Reset,
    Transaction,
    Write,
    WriterState,
    message_of,
)

__all__ = ["SqliteStorage"]

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (
    ord INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    session_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    id TEXT NOT NULL,
    role TEXT NOT NULL,
    content TEXT NOT NULL,
    type TEXT NOT NULL,
    created_at REAL NOT NULL,
    key TEXT,
    stopped INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (session_id, seq)
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS messages_key ON messages (session_id, key)
    WHERE key IS NOT NULL;
CREATE TABLE IF NOT EXISTS listen_backlog (
    n INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS listen_backlog_session ON listen_backlog (session_id, n);
CREATE TABLE IF NOT EXISTS listen_leases (
    session_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    deadline REAL NOT NULL,
    attempts INTEGER NOT NULL,
    PRIMARY KEY (session_id, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS listen_leases_deadline ON listen_leases (deadline);
CREATE INDEX IF NOT EXISTS listen_leases_session ON listen_leases (session_id, deadline);
"""


def _page(
    conn: sqlite3.Connection,
    session_id: str,
    after: int,
    upper: int,
    last: int | None,
    max_bytes: int,
) -> list[StoredMessage]:
    """`history` with `max_bytes`: rows are read one by one and reading stops at the
    first that does not fit, so no more than one message past the page is loaded."""
    low = after
    if last is not None:
        if last <= 0:
            return []
        # The oldest of the newest `last`, where the page starts (none: fewer are kept).
        row = conn.execute(
            "SELECT seq FROM messages WHERE session_id = ? AND seq > ? AND seq < ?"
            " ORDER BY seq DESC LIMIT 1 OFFSET ?",
            (session_id, after, upper, last - 1),
        ).fetchone()
        if row is not None:
            low = row[0] - 1
    cursor = conn.execute(
        f"SELECT {COLUMNS} FROM messages WHERE session_id = ? AND seq > ? AND seq < ? ORDER BY seq",
        (session_id, low, upper),
    )
    page: list[StoredMessage] = []
    total = 0
    try:
        for row in cursor:
            message = message_of(row)
            total += content_bytes(message)
            if page and total > max_bytes:
                break
            page.append(message)
    finally:
        cursor.close()  # ends the read: an open statement would pin the WAL snapshot
    return page


def _migrate(conn: sqlite3.Connection) -> None:
    """Bring a file written by an earlier version to the current layout."""
    columns = {r[1] for r in conn.execute("PRAGMA table_info(sessions)")}
    if "last_seq" in columns:  # now the largest seq of the session's messages
        conn.execute("ALTER TABLE sessions DROP COLUMN last_seq")
    backlog = {r[1] for r in conn.execute("PRAGMA table_info(listen_backlog)")}
    if "attempts" not in backlog:  # attempts a released message had already used
        conn.execute("ALTER TABLE listen_backlog ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0")
    messages = {r[1] for r in conn.execute("PRAGMA table_info(messages)")}
    if "stopped" not in messages:  # a reply ended early by the user's Stop
        conn.execute("ALTER TABLE messages ADD COLUMN stopped INTEGER NOT NULL DEFAULT 0")


class SqliteStorage:
    """A `Storage` in one SQLite file, safe against `kill -9` once a write returned."""

    def __init__(
        self,
        path: Path,
        *,
        history_limit: int = 10_000,
        listen_backlog_per_session: int = 1_000,
        sessions_max: int = 100_000,
        listen_lease_s: float = 300.0,
        listen_attempts_max: int = 3,
        synchronous: str = "FULL",
        batch_max: int = 512,
        pending_max: int = 50_000,
        busy_timeout_ms: int = 5000,
        seq_cache: int = 100_000,
    ) -> None:
        self._path = path
        self._limits = Limits(
            history_limit,
            listen_backlog_per_session,
            sessions_max,
            listen_lease_s,
            listen_attempts_max,
        )
        self._synchronous = synchronous.upper()
        self._batch_max = batch_max
        self._pending_max = pending_max
        self._busy_timeout_ms = busy_timeout_ms
        self._pending: list[tuple[Write, asyncio.Future[Any]]] = []
        self._state = WriterState(seq_cache)  # the writer thread's alone
        self._seqs = self._state.seqs
        self._wakeup = asyncio.Event()
        self._writer_task: asyncio.Task[None] | None = None
        self._wexec = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")
        self._rexec = ThreadPoolExecutor(1, thread_name_prefix="sqlite-reader")
        self._wconn: sqlite3.Connection | None = None
        self._rconn: sqlite3.Connection | None = None
        self._epoch = ""
        self._token_secret: bytes | None = None

    @property
    def epoch(self) -> str:
        return self._epoch

    @property
    def url(self) -> str:
        return f"sqlite:///{self._path}"

    # -- lifecycle -------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        # Room for the 2 x 64 multi-row INSERTs besides the other statements.
        conn = sqlite3.connect(
            self._path, isolation_level=None, check_same_thread=False, cached_statements=256
        )
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self._synchronous}")
        # Another process holding the file (a backup, a stray sqlite3 shell) makes writes
        # wait this long, then fail as 503 rather than hang the request.
        conn.execute(f"PRAGMA busy_timeout={int(self._busy_timeout_ms)}")
        return conn

    def _open_writer(self) -> str:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        conn = self._wconn = self._connect()
        conn.executescript(_SCHEMA)
        _migrate(conn)
        conn.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('epoch', ?)", (uuid.uuid4().hex,)
        )
        row = conn.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()
        return str(row[0])

    def _open_reader(self) -> None:
        self._rconn = self._connect()

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            self._epoch = await loop.run_in_executor(self._wexec, self._open_writer)
            await loop.run_in_executor(self._rexec, self._open_reader)
        except sqlite3.Error as exc:
            raise StorageUnavailable(f"cannot open {self.url}: {exc}") from exc
        self._writer_task = asyncio.create_task(self._write_loop(), name="sqlite-writer")

    async def close(self) -> None:
        if self._writer_task is not None:
            # Let every queued write commit before the connections go.
            while self._pending:
                await self._flush_once()
            self._writer_task.cancel()
            await asyncio.gather(self._writer_task, return_exceptions=True)
            self._writer_task = None
        loop = asyncio.get_running_loop()
        for conn, executor in ((self._wconn, self._wexec), (self._rconn, self._rexec)):
            if conn is not None:
                await loop.run_in_executor(executor, conn.close)
        self._wexec.shutdown(wait=True)
        self._rexec.shutdown(wait=True)

    async def ping(self) -> None:
        await self._read(lambda c: c.execute("SELECT 1").fetchone())

    # -- the group-commit writer ---------------------------------------------------

    async def _write(self, write: Write) -> Any:
        if self._writer_task is None:
            raise StorageUnavailable(f"{self.url} is not open")
        if len(self._pending) >= self._pending_max:
            raise StorageUnavailable("sqlite write queue is full; retry shortly")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((write, future))
        self._wakeup.set()
        return await future

    async def _write_loop(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                await self._flush_once()

    async def _flush_once(self) -> None:
        batch = self._pending[: self._batch_max]
        del self._pending[: self._batch_max]
        loop = asyncio.get_running_loop()
        try:
            outcomes = await loop.run_in_executor(
                self._wexec, self._commit, [write for write, _ in batch]
            )
        except Exception as exc:  # the writer must outlive any failure, or every write hangs
            error = StorageUnavailable(f"sqlite commit failed, nothing was stored: {exc}")
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        for (_, future), (ok, value) in zip(batch, outcomes, strict=True):
            if future.done():
                continue
            if ok and not isinstance(value, BridgeError):
                future.set_result(value)
            else:
                future.set_exception(value)

    def _commit(self, writes: list[Write]) -> list[tuple[bool, Any]]:
        """Commit `writes` together; if that fails, each alone (on the writer thread)."""
        conn = self._wconn
        assert conn is not None  # opened before the writer task starts
        conn.execute("BEGIN IMMEDIATE")  # a failure here fails the whole group: not retried
        try:
            values = self._apply(conn, writes)
        except Exception:
            # The cached numbers may be what was wrong (another program wrote to the file):
            # read them again, and commit each write alone so that a bad one fails alone.
            self._state.clear()
            return [self._commit_alone(conn, write) for write in writes]
        return [(True, value) for value in values]

    def _commit_alone(self, conn: sqlite3.Connection, write: Write) -> tuple[bool, Any]:
        try:
            conn.execute("BEGIN IMMEDIATE")
            return True, self._apply(conn, [write])[0]
        except Exception as exc:  # this write fails alone; the others go on
            return False, StorageUnavailable(f"sqlite: {exc}")

    def _apply(self, conn: sqlite3.Connection, writes: list[Write]) -> list[Any]:
        """Apply `writes` in the open transaction and commit it; roll back on any error."""
        txn = Transaction(conn, self._state, self._limits)
        try:
            values = [txn.apply(write) for write in writes]
            txn.finish()
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        self._state.commit(txn)
        return values

    async def _read(self, op: Callable[[sqlite3.Connection], T]) -> T:
        if self._rconn is None:
            raise StorageUnavailable(f"{self.url} is not open")
        conn = self._rconn
        try:
            return await asyncio.get_running_loop().run_in_executor(self._rexec, op, conn)
        except sqlite3.Error as exc:
            raise StorageUnavailable(f"sqlite read failed: {exc}") from exc

    # -- writes (queued for the group-commit writer) ------------------------------------

    async def create_session(
        self, session_id: str, seed: Sequence[Draft]
    ) -> tuple[StoredMessage, ...] | None:
        result: tuple[StoredMessage, ...] | None = await self._write(
            Create(session_id, tuple(seed))
        )
        return result

    async def append(self, session_id: str, draft: Draft, seed: Sequence[Draft]) -> Appended:
        result: Appended = await self._write(Append(session_id, draft, tuple(seed)))
        return result

    async def delete_session(self, session_id: str) -> bool:
        return bool(await self._write(Delete(session_id)))

    async def reset(self) -> None:
        await self._write(Reset())

    async def save_template(self, template: Template) -> None:
        body = template.model_dump_json()
        await self._write(
            lambda conn: conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('template', ?)", (body,)
            )
        )

    async def claim_listen(
        self, session_id: str | None, now: float | None = None, *, exclusive: bool = False
    ) -> ListenClaim:
        when = time.time() if now is None else now
        outcome: ListenClaim = await self._write(Claim(session_id, when, exclusive))
        return outcome

    async def release_listen(self, claimed: Claimed) -> None:
        await self._write(Release(claimed))

    async def ack_listen(self, claimed: Claimed) -> None:
        await self._write(Ack(claimed))

    async def renew_listen(self, claimed: Claimed, now: float | None = None) -> bool:
        when = time.time() if now is None else now
        return bool(await self._write(Renew(claimed, when)))

    async def token_secret(self) -> bytes:
        if self._token_secret is not None:
            return self._token_secret
        fresh = secrets.token_hex(32)

        def op(conn: sqlite3.Connection) -> str:
            # The first caller's value wins; later ones (and reopens) read it back.
            conn.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('token_secret', ?)", (fresh,)
            )
            row = conn.execute("SELECT value FROM meta WHERE key = 'token_secret'").fetchone()
            return str(row[0])

        stored: str = await self._write(op)
        self._token_secret = bytes.fromhex(stored)
        return self._token_secret

    # -- reads ----------------------------------------------------------------------

    async def history(
        self,
        session_id: str,
        *,
        after: int = 0,
        before: int | None = None,
        last: int | None = None,
        max_bytes: int | None = None,
    ) -> list[StoredMessage]:
        upper = before if before is not None else 2**62
        if max_bytes is not None:
            bound = max_bytes
            return await self._read(lambda c: _page(c, session_id, after, upper, last, bound))

        def op(conn: sqlite3.Connection) -> list[StoredMessage]:
            if last is None:
                rows = conn.execute(
                    f"SELECT {COLUMNS} FROM messages WHERE session_id = ? AND seq > ?"
                    " AND seq < ? ORDER BY seq",
                    (session_id, after, upper),
                ).fetchall()
            else:
                rows = conn.execute(
                    f"SELECT {COLUMNS} FROM messages WHERE session_id = ? AND seq > ?"
                    " AND seq < ? ORDER BY seq DESC LIMIT ?",
                    (session_id, after, upper, last),
                ).fetchall()
                rows.reverse()
            return [message_of(r) for r in rows]

        return await self._read(op)

    async def last_message(self, session_id: str, role: str | None) -> StoredMessage | None:
        def op(conn: sqlite3.Connection) -> StoredMessage | None:
            if role is None:
                row = conn.execute(
                    f"SELECT {COLUMNS} FROM messages WHERE session_id = ?"
                    " ORDER BY seq DESC LIMIT 1",
                    (session_id,),
                ).fetchone()
            else:
                row = conn.execute(
                    f"SELECT {COLUMNS} FROM messages WHERE session_id = ? AND role = ?"
                    " ORDER BY seq DESC LIMIT 1",
                    (session_id, role),
                ).fetchone()
            return message_of(row) if row else None

        return await self._read(op)

    async def session_info(self, session_id: str) -> SessionInfo | None:
        def op(conn: sqlite3.Connection) -> SessionInfo | None:
            row = conn.execute(
                "SELECT created_at, (SELECT MAX(seq) FROM messages WHERE session_id = ?),"
                " (SELECT COUNT(*) FROM messages WHERE session_id = ?)"
                " FROM sessions WHERE id = ?",
                (session_id, session_id, session_id),
            ).fetchone()
            if row is None:
                return None
            return SessionInfo(session_id, row[0], row[1] or 0, row[2])

        return await self._read(op)

    async def sessions(self, *, offset: int = 0, limit: int | None = None) -> list[str]:
        check_page(offset, limit)
        page = (-1 if limit is None else limit, offset)  # LIMIT -1: no limit
        sql = "SELECT id FROM sessions ORDER BY ord LIMIT ? OFFSET ?"
        return await self._read(lambda c: [r[0] for r in c.execute(sql, page)])

    async def last_session(self) -> str | None:
        def op(conn: sqlite3.Connection) -> str | None:
            row = conn.execute("SELECT id FROM sessions ORDER BY ord DESC LIMIT 1").fetchone()
            return str(row[0]) if row else None

        return await self._read(op)

    async def load_template(self) -> Template | None:
        def op(conn: sqlite3.Connection) -> Template | None:
            row = conn.execute("SELECT value FROM meta WHERE key = 'template'").fetchone()
            return Template.model_validate_json(row[0]) if row else None

        return await self._read(op)
