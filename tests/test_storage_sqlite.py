"""What only the SQLite store does: group commit, its seq cache, failure isolation, layout."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from bridge.errors import QuotaExceeded, StorageUnavailable
from bridge.models import Draft
from bridge.storage import Claimed
from bridge.storage.sqlite import SqliteStorage
from bridge.storage.sqlite_txn import SeqCache

WELCOME = (Draft.build("ai", "welcome", id="welcome"),)


def _draft(content: str, role: str = "user", key: str | None = None) -> Draft:
    return Draft.build(role, content, key=key)


async def _open(path: Path, **options: int) -> SqliteStorage:
    store = SqliteStorage(path, **options)  # type: ignore[arg-type]
    await store.open()
    return store


def _fail(conn: sqlite3.Connection) -> None:
    conn.execute("INSERT INTO no_such_table VALUES (1)")


async def test_writes_queued_together_apply_in_order_in_one_group(tmp_path: Path) -> None:
    store = await _open(tmp_path / "b.db")
    try:
        # Queued in one go: appends, a duplicate key, a delete and a re-creation, in order.
        results = await asyncio.gather(
            store.append("a", _draft("a1", key="x"), WELCOME),
            store.append("b", _draft("b1"), WELCOME),
            store.append("a", _draft("a2", key="x"), WELCOME),  # duplicate of a1
            store.append("a", _draft("a3"), WELCOME),
            store.delete_session("a"),
            store.append("a", _draft("a4", key="x"), WELCOME),  # the key went with it
            store.create_session("b", WELCOME),
            store.create_session("c", WELCOME),
        )
        a1, b1, a2, a3, deleted, a4, b_again, c = results
        assert (a1.message.seq, a3.message.seq) == (2, 3)
        assert a2.duplicate and a2.message == a1.message and a2.stored == ()
        assert deleted is True
        assert not a4.duplicate and [m.seq for m in a4.stored] == [1, 2]
        assert b1.message.seq == 2 and b_again is None
        assert c is not None and [m.seq for m in c] == [1]
        assert [m.content for m in await store.history("a")] == ["welcome", "a4"]
        info = await store.session_info("a")
        assert info is not None and (info.last_seq, info.message_count) == (2, 2)
    finally:
        await store.close()


async def test_a_failing_write_fails_alone_and_the_rest_commit(tmp_path: Path) -> None:
    store = await _open(tmp_path / "b.db")
    try:
        await store.append("s", _draft("first"), WELCOME)  # seq 2, now in the seq cache
        results = await asyncio.gather(
            *(store.append("s", _draft(f"m{i}"), WELCOME) for i in range(5)),
            store._write(_fail),
            *(store.append("s", _draft(f"n{i}"), WELCOME) for i in range(5)),
            return_exceptions=True,
        )
        failed = results.pop(5)
        assert isinstance(failed, StorageUnavailable) and "no_such_table" in str(failed)
        assert [r.message.seq for r in results] == list(range(3, 13))  # type: ignore[union-attr]
        after = await store.append("s", _draft("after"), WELCOME)
        assert after.message.seq == 13
    finally:
        await store.close()
    reopened = await _open(tmp_path / "b.db")
    try:
        history = await reopened.history("s")
        assert [m.seq for m in history] == list(range(1, 14))
        assert history[-1].content == "after"
    finally:
        await reopened.close()


async def test_a_group_whose_commit_fails_stores_nothing_and_recovers(tmp_path: Path) -> None:
    store = await _open(tmp_path / "b.db", busy_timeout_ms=100)
    other = sqlite3.connect(tmp_path / "b.db", isolation_level=None)
    try:
        await store.append("s", _draft("first"), WELCOME)
        # Another process holds the write lock, longer than the store's busy timeout.
        other.execute("BEGIN IMMEDIATE")
        results = await asyncio.gather(
            *(store.append("s", _draft(f"lost{i}"), WELCOME) for i in range(3)),
            return_exceptions=True,
        )
        assert all(isinstance(r, StorageUnavailable) for r in results)
        other.execute("ROLLBACK")
        again = await store.append("s", _draft("again"), WELCOME)
        assert again.message.seq == 3  # the failed group did not advance the cache
        assert [m.content for m in await store.history("s")] == ["welcome", "first", "again"]
    finally:
        other.close()
        await store.close()


async def test_a_file_of_the_earlier_layout_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old = sqlite3.connect(path, isolation_level=None)
    old.executescript(
        """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta VALUES ('epoch', 'e-old');
        CREATE TABLE sessions (
            ord INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE,
            created_at REAL NOT NULL, last_seq INTEGER NOT NULL);
        CREATE TABLE messages (
            session_id TEXT NOT NULL, seq INTEGER NOT NULL, id TEXT NOT NULL,
            role TEXT NOT NULL, content TEXT NOT NULL, type TEXT NOT NULL,
            created_at REAL NOT NULL, key TEXT, PRIMARY KEY (session_id, seq)) WITHOUT ROWID;
        INSERT INTO sessions (id, created_at, last_seq) VALUES ('s', 1.0, 2);
        INSERT INTO messages VALUES ('s', 1, 'welcome', 'ai', 'hi', 'text', 1.0, 'welcome');
        INSERT INTO messages VALUES ('s', 2, 'm2', 'user', 'old', 'text', 2.0, NULL);
        """
    )
    old.close()
    store = await _open(path)
    try:
        assert store.epoch == "e-old"
        nxt = await store.append("s", _draft("new"), WELCOME)
        assert nxt.message.seq == 3 and nxt.stored == (nxt.message,)
        fresh = await store.append("t", _draft("t1"), WELCOME)  # sessions rows insert again
        assert [m.seq for m in fresh.stored] == [1, 2]
        info = await store.session_info("s")
        assert info is not None and (info.last_seq, info.message_count) == (3, 3)
        assert await store.sessions() == ["s", "t"]
    finally:
        await store.close()


async def test_seq_cache_evicts_oldest_and_appends_stay_right(tmp_path: Path) -> None:
    store = await _open(tmp_path / "b.db", seq_cache=2)
    try:
        for round_ in range(3):
            await asyncio.gather(
                *(store.append(f"s{i}", _draft(f"{round_}"), WELCOME) for i in range(5))
            )
        assert len(store._seqs) == 2
        for i in range(5):
            assert [m.seq for m in await store.history(f"s{i}")] == [1, 2, 3, 4]
    finally:
        await store.close()


def test_seq_cache_keeps_the_newest_within_its_limit() -> None:
    cache = SeqCache(3)
    cache.update({"a": 1, "b": 1, "c": 1})
    cache.update({"a": 2})  # refreshed: now the newest
    cache.update({"d": 1})
    assert len(cache) == 3
    assert cache.get("b") is None and cache.get("a") == 2 and cache.get("d") == 1
    cache.discard("a")
    assert cache.get("a") is None
    cache.clear()
    assert len(cache) == 0


@pytest.mark.parametrize("rows", [1, 63, 64, 65, 200])
async def test_groups_of_any_size_insert_every_row(tmp_path: Path, rows: int) -> None:
    store = await _open(tmp_path / "b.db")
    try:
        results = await asyncio.gather(
            *(store.append(f"g{i % 9}", _draft(f"m{i}"), WELCOME) for i in range(rows))
        )
        stored = {(m.session_id, m.seq, m.id) for r in results for m in r.stored}
        history = {
            (m.session_id, m.seq, m.id) for i in range(9) for m in await store.history(f"g{i}")
        }
        assert stored == history and len(stored) == rows + min(rows, 9)
        claimed = 0
        while (await store.claim_listen(None)).claimed is not None:
            claimed += 1
        assert claimed == rows  # every user message reached the Listen backlog
    finally:
        await store.close()


async def test_a_row_written_by_another_program_does_not_wedge_the_session(
    tmp_path: Path,
) -> None:
    store = await _open(tmp_path / "b.db")
    try:
        await store.append("s", _draft("first"), WELCOME)  # seq 2, cached
        other = sqlite3.connect(tmp_path / "b.db", isolation_level=None)
        other.execute(
            "INSERT INTO messages (session_id, seq, id, role, content, type, created_at)"
            " VALUES ('s', 3, 'outside', 'ai', 'from elsewhere', 'text', 0)"
        )
        other.close()
        nxt = await store.append("s", _draft("next"), WELCOME)  # the cache said 2
        assert nxt.message.seq == 4
        assert [m.content for m in await store.history("s")] == [
            "welcome",
            "first",
            "from elsewhere",
            "next",
        ]
    finally:
        await store.close()


async def test_a_session_refused_by_the_quota_fails_alone_in_its_group(tmp_path: Path) -> None:
    store = await _open(tmp_path / "q.db", sessions_max=2)
    try:
        await store.append("a", _draft("a1"), WELCOME)
        results = await asyncio.gather(
            store.append("a", _draft("a2"), WELCOME),
            store.append("b", _draft("b1"), WELCOME),  # the last place
            store.append("c", _draft("c1"), WELCOME),  # refused
            store.create_session("d", WELCOME),  # refused
            store.append("b", _draft("b2"), WELCOME),
            return_exceptions=True,
        )
        a2, b1, c1, d, b2 = results
        assert isinstance(c1, QuotaExceeded) and isinstance(d, QuotaExceeded)
        assert [r.message.seq for r in (a2, b1, b2)] == [3, 2, 3]  # type: ignore[union-attr]
        assert await store.sessions() == ["a", "b"]
    finally:
        await store.close()
    reopened = await _open(tmp_path / "q.db", sessions_max=2)  # counted again from the file
    try:
        with pytest.raises(QuotaExceeded, match="holds 2 sessions"):
            await reopened.create_session("e", WELCOME)
    finally:
        await reopened.close()


async def test_the_listen_bound_holds_across_reopen_and_cache_eviction(tmp_path: Path) -> None:
    store = await _open(tmp_path / "l.db", listen_backlog_per_session=3, seq_cache=1)
    try:
        for i in range(4):
            await store.append("s", _draft(f"s{i}"), WELCOME)
            await store.append("t", _draft(f"t{i}"), WELCOME)  # pushes "s" out of the cache
        claimed = (await store.claim_listen("s")).claimed
        assert claimed is not None and claimed.message.content == "s1"
    finally:
        await store.close()
    reopened = await _open(tmp_path / "l.db", listen_backlog_per_session=3)
    try:
        await reopened.append("s", _draft("s4"), WELCOME)  # 2 left + 1: no eviction
        await reopened.append("t", _draft("t4"), WELCOME)  # 3 + 1: t1 goes
        contents = []
        while (m := (await reopened.claim_listen(None)).claimed) is not None:
            contents.append(m.message.content)
        assert contents == ["s2", "t2", "s3", "t3", "s4", "t4"]
    finally:
        await reopened.close()


T0 = 1_000_000.0  # the store clock of the lease tests: `now` is passed, nobody sleeps


class _Statements:
    """The SQL the writer connection runs, as SQLite traces it (on the writer thread)."""

    def __init__(self, store: SqliteStorage) -> None:
        self.seen: list[str] = []
        assert store._wconn is not None
        store._wconn.set_trace_callback(self.seen.append)

    def take(self) -> list[str]:
        """What ran since the last call, without the transaction's BEGIN and COMMIT."""
        seen = [s for s in self.seen if s not in ("BEGIN IMMEDIATE", "COMMIT")]
        self.seen.clear()  # the same list: the callback holds its bound `append`
        return seen


async def test_an_answer_costs_one_delete_with_a_lease_and_nothing_without(
    tmp_path: Path,
) -> None:
    store = await _open(tmp_path / "l.db", listen_lease_s=10)
    try:
        await store.append("s", _draft("question"), WELCOME)
        trace = _Statements(store)
        await store.append("s", _draft("no lease yet", role="ai"), WELCOME)
        assert [q.split()[0] for q in trace.take()] == ["INSERT"]  # the message, only
        assert (await store.claim_listen("s", T0)).claimed is not None
        trace.take()
        await store.append("s", _draft("the answer", role="ai"), WELCOME)
        ran = trace.take()
        assert [q.split()[0] for q in ran] == ["DELETE", "INSERT"]
        assert "listen_leases" in ran[0]
        await store.append("s", _draft("more", role="ai"), WELCOME)
        assert [q.split()[0] for q in trace.take()] == ["INSERT"]  # acknowledged already
        assert (await store.claim_listen(None, T0 + 100)).claimed is None
    finally:
        await store.close()


async def test_in_one_group_an_answer_acknowledges_only_the_claims_before_it(
    tmp_path: Path,
) -> None:
    store = await _open(tmp_path / "l.db", listen_lease_s=10)
    try:
        await store.append("s", _draft("q1"), WELCOME)
        await store.append("t", _draft("q2"), WELCOME)
        # Queued together: one transaction, applied in this order.
        first, _, second, _ = await asyncio.gather(
            store.claim_listen("s", T0),
            store.append("s", _draft("answer to q1", role="ai"), WELCOME),
            store.claim_listen("t", T0),
            store.append("s", _draft("answer in s again", role="ai"), WELCOME),
        )
        assert first.claimed is not None and second.claimed is not None
        again = (await store.claim_listen(None, T0 + 100)).claimed
        assert again is not None and (again.message.content, again.attempt) == ("q2", 2)
        assert (await store.claim_listen(None, T0 + 101)).claimed is None
    finally:
        await store.close()


async def test_an_answer_finds_the_lease_when_its_count_is_not_cached(tmp_path: Path) -> None:
    store = await _open(tmp_path / "l.db", listen_lease_s=10, seq_cache=1)
    try:
        await store.append("s", _draft("q"), WELCOME)
        assert (await store.claim_listen("s", T0)).claimed is not None
        await store.append("t", _draft("t1"), WELCOME)  # pushes "s" out of every cache
        await store.append("s", _draft("answer", role="ai"), WELCOME)
        again = (await store.claim_listen("s", T0 + 100)).claimed
        assert again is None  # answered: its lease went, though the count had to be read
    finally:
        await store.close()


async def test_a_backlog_of_the_earlier_layout_gains_its_attempts_column(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old = sqlite3.connect(path, isolation_level=None)
    old.executescript(
        """
        CREATE TABLE listen_backlog (
            n INTEGER PRIMARY KEY AUTOINCREMENT, session_id TEXT NOT NULL,
            seq INTEGER NOT NULL);
        """
    )
    old.close()
    store = await _open(path, listen_lease_s=10)
    try:
        await store.append("s", _draft("q"), WELCOME)
        first = (await store.claim_listen("s", T0)).claimed
        assert first is not None and first.attempt == 1
        assert (await store.claim_listen("s", T0 + 10)).claimed == Claimed(first.message, 2)
    finally:
        await store.close()


async def test_messages_of_the_earlier_layout_gain_the_stopped_column(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old = sqlite3.connect(path, isolation_level=None)
    old.executescript(
        """
        CREATE TABLE messages (
            session_id TEXT NOT NULL, seq INTEGER NOT NULL, id TEXT NOT NULL,
            role TEXT NOT NULL, content TEXT NOT NULL, type TEXT NOT NULL,
            created_at REAL NOT NULL, key TEXT, PRIMARY KEY (session_id, seq)) WITHOUT ROWID;
        CREATE TABLE sessions (
            ord INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE,
            created_at REAL NOT NULL);
        INSERT INTO sessions (id, created_at) VALUES ('s', 1.0);
        INSERT INTO messages VALUES ('s', 1, 'welcome', 'ai', 'hi', 'text', 1.0, 'welcome');
        INSERT INTO messages VALUES ('s', 2, 'm2', 'ai', 'old', 'text', 2.0, NULL);
        """
    )
    old.close()
    store = await _open(path)
    try:
        history = await store.history("s")
        assert [(m.content, m.stopped) for m in history] == [("hi", False), ("old", False)]
        assert "stopped" not in history[1].to_dict()
        cut = await store.append("s", Draft.build("ai", "cut short", stopped=True), WELCOME)
        assert cut.message.seq == 3 and cut.message.stopped
    finally:
        await store.close()
    reopened = await _open(path)
    try:
        last = await reopened.last_message("s", "ai")
        assert last == cut.message and last.stopped is True  # a bool, not SQLite's 1
        assert [m.stopped for m in await reopened.history("s", max_bytes=2)] == [False]
        page = await reopened.history("s", after=2, max_bytes=10**6)
        assert page == [cut.message] and page[0].to_dict()["stopped"] is True
    finally:
        await reopened.close()
