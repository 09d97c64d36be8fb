"""`sqlite:///path.db`: one embedded file, group commit, durable before the 200.

Writes are queued and a single writer task commits everything queued so far in one
transaction (each write in its own savepoint, so one bad write fails alone), then
resolves the callers: many concurrent POSTs share one fsync. Reads use a second
connection; WAL mode lets them run beside the writer. Both connections live in their
own one-thread executors because sqlite3 connections must stay on one thread.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from bridge.errors import StorageUnavailable
from bridge.models import Draft, SessionInfo, StoredMessage, Template
from bridge.storage.base import Appended

__all__ = ["SqliteStorage"]

T = TypeVar("T")
Op = Callable[[sqlite3.Connection], Any]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (
    ord INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL,
    last_seq INTEGER NOT NULL
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
    PRIMARY KEY (session_id, seq)
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS messages_key ON messages (session_id, key)
    WHERE key IS NOT NULL;
CREATE TABLE IF NOT EXISTS listen_backlog (
    n INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id TEXT NOT NULL,
    seq INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS listen_backlog_session ON listen_backlog (session_id, n);
"""

_COLUMNS = "id, session_id, seq, role, content, type, created_at"


def _row(row: tuple[Any, ...]) -> StoredMessage:
    return StoredMessage(*row)


class SqliteStorage:
    """A `Storage` in one SQLite file, safe against `kill -9` once a write returned."""

    def __init__(
        self,
        path: Path,
        *,
        history_limit: int = 10_000,
        listen_backlog: int = 10_000,
        synchronous: str = "FULL",
        batch_max: int = 512,
        pending_max: int = 50_000,
        busy_timeout_ms: int = 5000,
    ) -> None:
        self._path = path
        self._history_limit = history_limit
        self._listen_backlog = listen_backlog
        self._synchronous = synchronous.upper()
        self._batch_max = batch_max
        self._pending_max = pending_max
        self._busy_timeout_ms = busy_timeout_ms
        self._pending: list[tuple[Op, asyncio.Future[Any]]] = []
        self._wakeup = asyncio.Event()
        self._writer_task: asyncio.Task[None] | None = None
        self._wexec = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")
        self._rexec = ThreadPoolExecutor(1, thread_name_prefix="sqlite-reader")
        self._wconn: sqlite3.Connection | None = None
        self._rconn: sqlite3.Connection | None = None
        self._epoch = ""

    @property
    def epoch(self) -> str:
        return self._epoch

    @property
    def url(self) -> str:
        return f"sqlite:///{self._path}"

    # -- lifecycle -------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
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

    async def _write(self, op: Callable[[sqlite3.Connection], T]) -> T:
        if self._writer_task is None:
            raise StorageUnavailable(f"{self.url} is not open")
        if len(self._pending) >= self._pending_max:
            raise StorageUnavailable("sqlite write queue is full; retry shortly")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._pending.append((op, future))
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
                self._wexec, self._commit, [op for op, _ in batch]
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
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)

    def _commit(self, ops: list[Op]) -> list[tuple[bool, Any]]:
        conn = self._wconn
        assert conn is not None  # opened before the writer task starts
        outcomes: list[tuple[bool, Any]] = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            for op in ops:
                conn.execute("SAVEPOINT op")
                try:
                    outcomes.append((True, op(conn)))
                    conn.execute("RELEASE op")
                except Exception as exc:  # this write fails alone; the batch goes on
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    outcomes.append((False, StorageUnavailable(f"sqlite: {exc}")))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return outcomes

    async def _read(self, op: Callable[[sqlite3.Connection], T]) -> T:
        if self._rconn is None:
            raise StorageUnavailable(f"{self.url} is not open")
        conn = self._rconn
        try:
            return await asyncio.get_running_loop().run_in_executor(self._rexec, op, conn)
        except sqlite3.Error as exc:
            raise StorageUnavailable(f"sqlite read failed: {exc}") from exc

    # -- write operations (run on the writer thread inside a transaction) -------------

    def _insert(
        self, conn: sqlite3.Connection, session_id: str, seq: int, d: Draft
    ) -> StoredMessage:
        message = StoredMessage.from_draft(session_id, seq, d)
        conn.execute(
            "INSERT INTO messages (id, session_id, seq, role, content, type, created_at, key)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (message.id, session_id, seq, d.role, d.content, d.type, message.created_at, d.key),
        )
        if d.role == "user":
            cur = conn.execute(
                "INSERT INTO listen_backlog (session_id, seq) VALUES (?, ?)", (session_id, seq)
            )
            n = cur.lastrowid or 0
            if n % 100 == 0:
                conn.execute("DELETE FROM listen_backlog WHERE n <= ?", (n - self._listen_backlog,))
        return message

    def _create(
        self, conn: sqlite3.Connection, session_id: str, seed: Sequence[Draft]
    ) -> list[StoredMessage]:
        conn.execute(
            "INSERT INTO sessions (id, created_at, last_seq) VALUES (?, ?, ?)",
            (session_id, time.time(), len(seed)),
        )
        return [self._insert(conn, session_id, i, d) for i, d in enumerate(seed, 1)]

    def _trim(self, conn: sqlite3.Connection, session_id: str, seq: int) -> None:
        step = max(1, self._history_limit // 10)
        if seq > self._history_limit and seq % step == 0:
            conn.execute(
                "DELETE FROM messages WHERE session_id = ? AND seq <= ?",
                (session_id, seq - self._history_limit),
            )

    async def create_session(
        self, session_id: str, seed: Sequence[Draft]
    ) -> tuple[StoredMessage, ...] | None:
        def op(conn: sqlite3.Connection) -> tuple[StoredMessage, ...] | None:
            if conn.execute("SELECT 1 FROM sessions WHERE id = ?", (session_id,)).fetchone():
                return None
            return tuple(self._create(conn, session_id, seed))

        return await self._write(op)

    async def append(self, session_id: str, draft: Draft, seed: Sequence[Draft]) -> Appended:
        def op(conn: sqlite3.Connection) -> Appended:
            row = conn.execute(
                "SELECT last_seq FROM sessions WHERE id = ?", (session_id,)
            ).fetchone()
            stored: list[StoredMessage] = []
            if row is None:
                stored = self._create(conn, session_id, seed)
                last_seq = len(seed)
            else:
                last_seq = row[0]
                if draft.key is not None:
                    first = conn.execute(
                        f"SELECT {_COLUMNS} FROM messages WHERE session_id = ? AND key = ?",
                        (session_id, draft.key),
                    ).fetchone()
                    if first is not None:
                        return Appended(_row(first), (), True)
            message = self._insert(conn, session_id, last_seq + 1, draft)
            conn.execute(
                "UPDATE sessions SET last_seq = ? WHERE id = ?", (last_seq + 1, session_id)
            )
            self._trim(conn, session_id, last_seq + 1)
            stored.append(message)
            return Appended(message, tuple(stored), False)

        return await self._write(op)

    async def delete_session(self, session_id: str) -> bool:
        def op(conn: sqlite3.Connection) -> bool:
            conn.execute("DELETE FROM messages WHERE session_id = ?", (session_id,))
            conn.execute("DELETE FROM listen_backlog WHERE session_id = ?", (session_id,))
            return conn.execute("DELETE FROM sessions WHERE id = ?", (session_id,)).rowcount > 0

        return await self._write(op)

    async def reset(self) -> None:
        def op(conn: sqlite3.Connection) -> None:
            for table in ("messages", "listen_backlog", "sessions"):
                conn.execute(f"DELETE FROM {table}")

        await self._write(op)

    async def save_template(self, template: Template) -> None:
        body = template.model_dump_json()
        await self._write(
            lambda conn: conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('template', ?)", (body,)
            )
        )

    async def claim_listen(self, session_id: str | None) -> StoredMessage | None:
        def op(conn: sqlite3.Connection) -> StoredMessage | None:
            where, args = ("WHERE session_id = ?", (session_id,)) if session_id else ("", ())
            row = conn.execute(
                f"SELECT n, session_id, seq FROM listen_backlog {where} ORDER BY n LIMIT 1", args
            ).fetchone()
            if row is None:
                return None
            conn.execute("DELETE FROM listen_backlog WHERE n = ?", (row[0],))
            found = conn.execute(
                f"SELECT {_COLUMNS} FROM messages WHERE session_id = ? AND seq = ?",
                (row[1], row[2]),
            ).fetchone()
            # A message trimmed from history since is gone for Listen too.
            return _row(found) if found else op(conn)

        return await self._write(op)

    # -- reads ----------------------------------------------------------------------

    async def history(
        self,
        session_id: str,
        *,
        after: int = 0,
        before: int | None = None,
        last: int | None = None,
    ) -> list[StoredMessage]:
        upper = before if before is not None else 2**62

        def op(conn: sqlite3.Connection) -> list[StoredMessage]:
            if last is None:
                rows = conn.execute(
                    f"SELECT {_COLUMNS} FROM messages WHERE session_id = ? AND seq > ?"
                    " AND seq < ? ORDER BY seq",
                    (session_id, after, upper),
                ).fetchall()
            else:
                rows = conn.execute(
                    f"SELECT {_COLUMNS} FROM messages WHERE session_id = ? AND seq > ?"
                    " AND seq < ? ORDER BY seq DESC LIMIT ?",
                    (session_id, after, upper, last),
                ).fetchall()
                rows.reverse()
            return [_row(r) for r in rows]

        return await self._read(op)

    async def last_message(self, session_id: str, role: str | None) -> StoredMessage | None:
        def op(conn: sqlite3.Connection) -> StoredMessage | None:
            if role is None:
                row = conn.execute(
                    f"SELECT {_COLUMNS} FROM messages WHERE session_id = ?"
                    " ORDER BY seq DESC LIMIT 1",
                    (session_id,),
                ).fetchone()
            else:
                row = conn.execute(
                    f"SELECT {_COLUMNS} FROM messages WHERE session_id = ? AND role = ?"
                    " ORDER BY seq DESC LIMIT 1",
                    (session_id, role),
                ).fetchone()
            return _row(row) if row else None

        return await self._read(op)

    async def session_info(self, session_id: str) -> SessionInfo | None:
        def op(conn: sqlite3.Connection) -> SessionInfo | None:
            row = conn.execute(
                "SELECT created_at, last_seq FROM sessions WHERE id = ?", (session_id,)
            ).fetchone()
            if row is None:
                return None
            (count,) = conn.execute(
                "SELECT COUNT(*) FROM messages WHERE session_id = ?", (session_id,)
            ).fetchone()
            return SessionInfo(session_id, row[0], row[1], count)

        return await self._read(op)

    async def sessions(self) -> list[str]:
        return await self._read(
            lambda c: [r[0] for r in c.execute("SELECT id FROM sessions ORDER BY ord")]
        )

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
