"""One contract every storage backend passes (memory, SQLite, Redis)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bridge.errors import InvalidInput, QuotaExceeded
from bridge.models import Draft, StoredMessage, Template
from bridge.storage import Claimed, DroppedLease, ListenClaim, Storage
from tests.storage_backends import BACKENDS, opened

pytestmark = pytest.mark.parametrize("kind", BACKENDS)

WELCOME = (Draft.build("ai", "welcome"),)
T0 = 1_000_000.0  # the store clock of the lease tests: `now` is passed, nobody sleeps


def _draft(content: str, role: str = "user", key: str | None = None) -> Draft:
    return Draft.build(role, content, key=key)


async def _claim(store: Storage, session_id: str | None = None) -> StoredMessage | None:
    """The message a claim hands out, or None."""
    claimed = (await store.claim_listen(session_id)).claimed
    return None if claimed is None else claimed.message


async def _at(store: Storage, now: float, session_id: str | None = None) -> tuple[str, int] | None:
    """(content, attempt) of what a claim at store time `now` hands out, or None."""
    claimed = (await store.claim_listen(session_id, now)).claimed
    return None if claimed is None else (claimed.message.content, claimed.attempt)


async def test_append_creates_session_with_seed_and_contiguous_seqs(
    kind: str, tmp_path: Path
) -> None:
    async with opened(kind, tmp_path) as store:
        first = await store.append("s1", _draft("a"), WELCOME)
        assert [m.seq for m in first.stored] == [1, 2]
        assert first.stored[0].content == "welcome" and first.stored[0].role == "ai"
        assert first.message.seq == 2 and not first.duplicate
        second = await store.append("s1", _draft("b"), WELCOME)
        assert [m.seq for m in second.stored] == [3]
        history = await store.history("s1")
        assert [(m.seq, m.content) for m in history] == [(1, "welcome"), (2, "a"), (3, "b")]
        assert all(m.session_id == "s1" for m in history)


async def test_concurrent_appends_get_distinct_contiguous_seqs(kind: str, tmp_path: Path) -> None:
    async with opened(kind, tmp_path) as store:
        results = await asyncio.gather(
            *(store.append("busy", _draft(f"m{i}"), WELCOME) for i in range(50))
        )
        seqs = sorted(r.message.seq for r in results)
        assert seqs == list(range(2, 52))
        history = await store.history("busy")
        assert [m.seq for m in history] == list(range(1, 52))


async def test_idempotency_key_returns_first_message(kind: str, tmp_path: Path) -> None:
    async with opened(kind, tmp_path) as store:
        first = await store.append("s", _draft("once", key="k1"), WELCOME)
        again = await store.append("s", _draft("once", key="k1"), WELCOME)
        assert again.duplicate and again.stored == ()
        assert again.message == first.message
        other_session = await store.append("t", _draft("once", key="k1"), WELCOME)
        assert not other_session.duplicate
        assert [m.content for m in await store.history("s")] == ["welcome", "once"]


async def test_history_windows(kind: str, tmp_path: Path) -> None:
    async with opened(kind, tmp_path) as store:
        for i in range(9):
            await store.append("h", _draft(str(i)), WELCOME)
        # seqs 1 (welcome) .. 10
        assert [m.seq for m in await store.history("h", after=7)] == [8, 9, 10]
        assert [m.seq for m in await store.history("h", last=2)] == [9, 10]
        assert [m.seq for m in await store.history("h", before=4)] == [1, 2, 3]
        assert [m.seq for m in await store.history("h", after=2, before=6, last=2)] == [4, 5]
        assert await store.history("unknown") == []


async def test_history_with_max_bytes_stops_at_the_bound_with_at_least_one(
    kind: str, tmp_path: Path
) -> None:
    sizes = [1000, 1000, 1000, 5000, 1000, 1000]  # seqs 1..6, ASCII: bytes = characters
    async with opened(kind, tmp_path) as store:
        await store.create_session("b", ())
        for i, size in enumerate(sizes):
            await store.append("b", _draft(chr(ord("a") + i) * size), ())

        async def seqs(**window: int) -> list[int]:
            return [m.seq for m in await store.history("b", **window)]

        assert await seqs(max_bytes=2500) == [1, 2]  # 1 and 2 fit, 3 would pass 2500
        assert await seqs(after=2, max_bytes=2500) == [3]
        assert await seqs(after=3, max_bytes=2500) == [4]  # alone over the bound: still one
        assert await seqs(after=3, max_bytes=0) == [4]
        assert await seqs(after=4, max_bytes=10**6) == [5, 6]
        assert await seqs(after=1, before=4, max_bytes=10**6) == [2, 3]
        assert await seqs(last=2, max_bytes=1500) == [5]  # the oldest of the newest two
        assert await seqs(last=3, max_bytes=10_000) == [4, 5, 6]
        assert await seqs(after=1, before=5, last=2, max_bytes=2500) == [3]
        assert await seqs(last=0, max_bytes=10**6) == []
        assert await seqs(after=6, max_bytes=1) == []
        assert await store.history("unknown", max_bytes=1) == []

        # Every bound gives the first messages of the unbounded answer, as many as fit.
        full = await store.history("b")
        for budget in range(0, 11_000, 250):
            page = await store.history("b", max_bytes=budget)
            assert page and page == full[: len(page)], budget
            weight = sum(len(m.content) for m in page)
            assert len(page) == 1 or weight <= budget, budget
            if len(page) < len(full):
                with_next = weight + len(full[len(page)].content)
                if kind == "redis":  # weighs messages as stored: a little more than content
                    with_next += 300 * (len(page) + 1)
                assert with_next > budget, budget  # the next one would not have fit

        # Sizes are UTF-8 bytes, not characters: 600 x "é" weighs 1200 bytes.
        for _ in range(2):
            await store.append("u", _draft("é" * 600), ())
        assert len(await store.history("u", max_bytes=2000)) == 1
        assert len(await store.history("u", max_bytes=10**6)) == 2


async def test_history_with_max_bytes_over_many_messages_matches_the_plain_read(
    kind: str, tmp_path: Path
) -> None:
    # 70 messages: several of the batches a Redis script reads (16), and a cut inside one.
    async with opened(kind, tmp_path) as store:
        for i in range(70):
            await store.append("m", _draft(f"{i:03}" + "x" * 97), ())  # 100 bytes each
        windows: list[dict[str, int]] = [
            {}, {"after": 5}, {"before": 60}, {"last": 40}, {"after": 3, "before": 66, "last": 50}
        ]
        for window in windows:
            plain = await store.history("m", **window)
            assert await store.history("m", **window, max_bytes=10**6) == plain, window
            cut = await store.history("m", **window, max_bytes=4450)  # 44 of 100 bytes fit
            expect = 44 if kind != "redis" else len(cut)  # Redis counts a little more
            assert cut == plain[:expect] and 20 <= len(cut) <= 44, window


async def test_create_session_only_once(kind: str, tmp_path: Path) -> None:
    async with opened(kind, tmp_path) as store:
        created = await store.create_session("c", WELCOME)
        assert created is not None and [m.seq for m in created] == [1]
        assert await store.create_session("c", WELCOME) is None
        info = await store.session_info("c")
        assert info is not None and info.last_seq == 1 and info.message_count == 1
        assert await store.session_info("nope") is None


async def test_sessions_in_creation_order_and_last(kind: str, tmp_path: Path) -> None:
    async with opened(kind, tmp_path) as store:
        assert await store.last_session() is None
        for name in ("b", "a", "c"):
            await store.create_session(name, WELCOME)
        await store.append("a", _draft("x"), WELCOME)
        assert await store.sessions() == ["b", "a", "c"]
        assert await store.last_session() == "c"


async def test_last_message_by_role(kind: str, tmp_path: Path) -> None:
    async with opened(kind, tmp_path) as store:
        await store.append("r", _draft("u1"), WELCOME)
        await store.append("r", _draft("a1", role="ai"), WELCOME)
        last_any = await store.last_message("r", None)
        last_user = await store.last_message("r", "user")
        assert last_any is not None and last_any.content == "a1"
        assert last_user is not None and last_user.content == "u1"
        assert await store.last_message("missing", None) is None


async def test_delete_and_reset(kind: str, tmp_path: Path) -> None:
    async with opened(kind, tmp_path) as store:
        await store.append("d1", _draft("x"), WELCOME)
        await store.append("d2", _draft("y"), WELCOME)
        assert await store.delete_session("d1")
        assert not await store.delete_session("d1")
        assert await store.history("d1") == [] and await store.sessions() == ["d2"]
        assert await _claim(store, "d1") is None
        await store.reset()
        assert await store.sessions() == [] and await _claim(store) is None
        again = await store.append("d2", _draft("z"), WELCOME)
        assert again.message.seq == 2  # a new history starts at 1 again


async def test_listen_claims_each_user_message_once_in_order(kind: str, tmp_path: Path) -> None:
    async with opened(kind, tmp_path) as store:
        await store.append("l1", _draft("first"), WELCOME)
        await store.append("l1", _draft("bot", role="ai"), WELCOME)
        await store.append("l2", _draft("second"), WELCOME)
        await store.append("l1", _draft("third"), WELCOME)
        only_l2 = await _claim(store, "l2")
        assert only_l2 is not None and only_l2.content == "second"
        claimed = await asyncio.gather(*(_claim(store) for _ in range(4)))
        contents = sorted(m.content for m in claimed if m is not None)
        assert contents == ["first", "third"]
        assert await _claim(store) is None


async def test_template_roundtrip(kind: str, tmp_path: Path) -> None:
    async with opened(kind, tmp_path) as store:
        assert await store.load_template() is None
        template = Template(welcome_msg="hey", input_msg="say", write_speed=0.1, ai_avatar="🤖")
        await store.save_template(template)
        assert await store.load_template() == template


async def test_history_limit_trims_oldest(kind: str, tmp_path: Path) -> None:
    async with opened(kind, tmp_path, history_limit=20) as store:
        for i in range(60):
            await store.append("t", _draft(str(i)), WELCOME)
        history = await store.history("t")
        assert 20 <= len(history) <= 22  # trimmed in steps, never below the limit
        assert history[-1].seq == 61
        assert [m.seq for m in history] == list(range(history[0].seq, 62))


async def test_epoch_is_stable_while_open_and_ping(kind: str, tmp_path: Path) -> None:
    async with opened(kind, tmp_path) as store:
        epoch = store.epoch
        assert epoch
        await store.append("e", _draft("x"), WELCOME)
        assert store.epoch == epoch
        await store.ping()


async def test_durable_history_and_epoch_survive_reopen(kind: str, tmp_path: Path) -> None:
    if kind == "memory":
        pytest.skip("memory:// keeps nothing across a reopen by design")
    async with opened(kind, tmp_path, keep=True) as store:
        await store.append("p", _draft("kept"), WELCOME)
        epoch = store.epoch
    async with opened(kind, tmp_path) as store:
        assert store.epoch == epoch
        assert [m.content for m in await store.history("p")] == ["welcome", "kept"]
        nxt = await store.append("p", _draft("next"), WELCOME)
        assert nxt.message.seq == 3


async def test_concurrent_appends_over_many_sessions(kind: str, tmp_path: Path) -> None:
    # Enough at once for a grouping store to put many sessions, roles and repeated
    # idempotency keys into one transaction.
    async with opened(kind, tmp_path) as store:
        drafts = [
            (f"s{i % 7}", _draft(f"m{i}", "user" if i % 3 else "ai", key=f"k{i % 35}"))
            for i in range(120)
        ]
        results = await asyncio.gather(*(store.append(s, d, WELCOME) for s, d in drafts))
        fresh = [(s, r) for (s, _), r in zip(drafts, results, strict=True) if not r.duplicate]
        assert len(fresh) == 35  # one per key (i and i + 35 share a session)
        for (s, d), r in zip(drafts, results, strict=True):
            assert r.message.session_id == s
            if r.duplicate:  # the first message stored under this key
                assert r.stored == () and r.message.content != d.content
        sessions = sorted({s for s, _ in drafts})
        for session in sessions:
            mine = sorted(r.message.seq for s, r in fresh if s == session)
            assert mine == list(range(2, 2 + len(mine)))  # 1 is the welcome
            assert [m.seq for m in await store.history(session)] == [1, *mine]
        user = sorted(r.message.id for _, r in fresh if r.message.role == "user")
        claimed = []
        while (m := await _claim(store)) is not None:
            claimed.append(m.id)
        assert sorted(claimed) == user  # each once


async def test_concurrent_appends_trim_to_the_limit(kind: str, tmp_path: Path) -> None:
    async with opened(kind, tmp_path, history_limit=5) as store:
        results = await asyncio.gather(
            *(store.append(f"t{i % 3}", _draft(f"m{i}"), WELCOME) for i in range(90))
        )
        for session in ("t0", "t1", "t2"):
            last = max(r.message.seq for r in results if r.message.session_id == session)
            assert last == 31  # the welcome and 30 messages
            history = await store.history(session)
            assert 5 <= len(history) <= 6  # trimmed in steps, never below the limit
            assert [m.seq for m in history] == list(range(history[0].seq, 32))


async def test_token_secret_is_random_kept_and_survives_reset_and_reopen(
    kind: str, tmp_path: Path
) -> None:
    async with opened(kind, tmp_path, keep=True) as store:
        secret = await store.token_secret()
        assert isinstance(secret, bytes) and len(secret) == 32
        assert len(set(secret)) > 8  # random bytes, not a constant or a padded string
        assert await asyncio.gather(*(store.token_secret() for _ in range(5))) == [secret] * 5
        await store.reset()  # deleting every session does not change who signed tokens
        assert await store.token_secret() == secret
    async with opened(kind, tmp_path) as again:
        if kind == "memory":  # this process only: a new store is a new secret
            assert await again.token_secret() != secret
        else:
            assert await again.token_secret() == secret


async def test_a_listen_flood_evicts_only_its_own_sessions_oldest(
    kind: str, tmp_path: Path
) -> None:
    async with opened(kind, tmp_path, listen_backlog_per_session=5) as store:
        await store.append("quiet", _draft("keep me"), WELCOME)
        for i in range(12):
            await store.append("flood", _draft(f"f{i}"), WELCOME)
        # A flood of concurrent appends (one group in SQLite) is bounded the same way.
        await asyncio.gather(*(store.append("flood", _draft(f"g{i}"), WELCOME) for i in range(9)))
        quiet = await _claim(store, "quiet")
        assert quiet is not None and quiet.content == "keep me"
        kept = []
        while (m := await _claim(store)) is not None:
            kept.append(m)
        assert [m.session_id for m in kept] == ["flood"] * 5
        assert [m.seq for m in kept] == list(range(18, 23))  # the newest 5, oldest first


async def test_a_released_message_is_claimed_next_and_only_once(
    kind: str, tmp_path: Path
) -> None:
    async with opened(kind, tmp_path, listen_backlog_per_session=2) as store:
        await store.append("s", _draft("u1"), WELCOME)
        await store.append("s", _draft("u2"), WELCOME)
        await store.append("t", _draft("t1"), WELCOME)
        first = (await store.claim_listen(None)).claimed
        assert first is not None and first.message.content == "u1"
        await store.release_listen(first)
        await store.release_listen(first)  # a second release does not make a second copy
        assert (await store.claim_listen("s")).claimed == first  # front of its session's queue
        await store.append("s", _draft("u3"), WELCOME)  # s is at its bound (u2, u3)
        await store.release_listen(first)
        assert (await store.claim_listen(None)).claimed == first  # front of every queue too
        rest = []
        while (m := await _claim(store)) is not None:
            rest.append(m.content)
        assert rest == ["u2", "t1", "u3"]  # a release evicted nothing


async def test_a_release_of_a_message_no_longer_held_does_nothing(
    kind: str, tmp_path: Path
) -> None:
    async with opened(kind, tmp_path) as store:
        await store.append("gone", _draft("old"), WELCOME)
        claimed = (await store.claim_listen("gone")).claimed
        assert claimed is not None
        await store.delete_session("gone")
        await store.release_listen(claimed)  # deleted: not brought back
        assert await _claim(store) is None
        again = await store.append("gone", _draft("new", role="ai"), WELCOME)
        assert again.message.seq == claimed.message.seq  # a new session, another message
        await store.release_listen(claimed)
        assert await _claim(store) is None


async def test_sessions_beyond_the_quota_are_refused_and_nothing_is_stored(
    kind: str, tmp_path: Path
) -> None:
    async with opened(kind, tmp_path, sessions_max=3) as store:
        for name in ("a", "b"):
            await store.create_session(name, WELCOME)
        results = await asyncio.gather(
            *(store.create_session(f"new{i}", WELCOME) for i in range(3)),
            *(store.append(f"post{i}", _draft("hi"), WELCOME) for i in range(3)),
            return_exceptions=True,
        )
        refused = [r for r in results if isinstance(r, QuotaExceeded)]
        assert len(refused) == 5  # exactly one of the six took the last place
        assert "holds 3 sessions" in refused[0].detail
        assert "BRIDGE_SESSIONS_MAX" in refused[0].detail
        held = await store.sessions()
        assert len(held) == 3 and held[:2] == ["a", "b"]
        for i in range(3):
            for name in (f"new{i}", f"post{i}"):
                if name not in held:
                    assert await store.session_info(name) is None
                    assert await store.history(name) == []
        winner_posted = held[2].startswith("post")
        assert (await _claim(store) is not None) == winner_posted
        assert await _claim(store) is None  # no refused message reached Listen
        # Existing sessions go on; a known session is no new session.
        assert not (await store.append("a", _draft("more"), WELCOME)).duplicate
        assert await store.create_session("b", WELCOME) is None
        with pytest.raises(QuotaExceeded):
            await store.append("late", _draft("x"), WELCOME)
        assert await store.delete_session("a")
        assert await store.create_session("late", WELCOME) is not None
        await store.reset()
        for name in ("x", "y", "z"):
            assert await store.create_session(name, WELCOME) is not None


async def test_sessions_are_listed_in_pages(kind: str, tmp_path: Path) -> None:
    async with opened(kind, tmp_path) as store:
        names = [f"p{i}" for i in range(5)]
        for name in names:
            await store.create_session(name, WELCOME)
        assert await store.sessions() == names
        assert await store.sessions(limit=2) == names[:2]
        assert await store.sessions(offset=1, limit=2) == names[1:3]
        assert await store.sessions(offset=3) == names[3:]
        assert await store.sessions(offset=4, limit=10) == names[4:]
        assert await store.sessions(offset=9) == [] and await store.sessions(limit=0) == []
        for bad in ({"offset": -1}, {"limit": -1}):
            with pytest.raises(InvalidInput):
                await store.sessions(**bad)


# -- Listen leases (a claimed message nobody answered is offered again) ----------------


async def test_an_unanswered_claim_is_offered_again_until_its_attempts_are_used_up(
    kind: str, tmp_path: Path
) -> None:
    async with opened(kind, tmp_path, listen_lease_s=10, listen_attempts_max=3) as store:
        posted = await store.append("s", _draft("hello"), WELCOME)
        seq = posted.message.seq
        assert await _at(store, T0, "s") == ("hello", 1)
        assert await _at(store, T0 + 9.9) is None  # leased: nobody else gets it
        assert await _at(store, T0 + 10, "s") == ("hello", 2)  # the lease ran out
        assert await _at(store, T0 + 19.9) is None  # leased again, from the new claim on
        assert await _at(store, T0 + 20, "other") is None  # a claim of another session
        assert await _at(store, T0 + 20) == ("hello", 3)
        last = await store.claim_listen("s", T0 + 30)  # the third went unanswered too
        assert last.claimed is None
        assert last.dropped == (DroppedLease("s", seq, 3),)
        again = await store.claim_listen(None, T0 + 1000)
        assert again.claimed is None and again.dropped == ()  # dropped and reported once
        # Its history stays; only Listen is done with it.
        assert [m.content for m in await store.history("s")] == ["welcome", "hello"]


async def test_an_ai_message_acknowledges_every_lease_of_its_session(
    kind: str, tmp_path: Path
) -> None:
    async with opened(kind, tmp_path, listen_lease_s=10) as store:
        for session, content in (("s", "s1"), ("s", "s2"), ("t", "t1")):
            await store.append(session, _draft(content), WELCOME)
        assert await _at(store, T0) == ("s1", 1)
        assert await _at(store, T0 + 1) == ("s2", 1)
        assert await _at(store, T0 + 2) == ("t1", 1)
        await store.append("s", _draft("later", role="user"), WELCOME)  # no answer
        await store.append("s", _draft("the answer", role="ai"), WELCOME)
        assert await _at(store, T0 + 100) == ("t1", 2)  # s's leases are gone, t's is not
        assert await _at(store, T0 + 101) == ("later", 1)  # claimed after the answer
        await store.append("s", _draft("another answer", role="ai"), WELCOME)
        assert await _at(store, T0 + 1000) == ("t1", 3)
        assert await _at(store, T0 + 1001) is None


async def test_run_out_leases_come_first_oldest_first_within_the_claims_session(
    kind: str, tmp_path: Path
) -> None:
    async with opened(kind, tmp_path, listen_lease_s=10) as store:
        await store.append("s", _draft("a"), WELCOME)
        await store.append("t", _draft("b"), WELCOME)
        assert await _at(store, T0) == ("a", 1)
        assert await _at(store, T0 + 1) == ("b", 1)
        await store.append("s", _draft("c"), WELCOME)
        await store.append("t", _draft("d"), WELCOME)
        assert await _at(store, T0 + 50, "t") == ("b", 2)  # t's, though s's ran out first
        assert await _at(store, T0 + 51) == ("a", 2)  # before the backlog's older "c"
        assert await _at(store, T0 + 52) == ("c", 1)
        assert await _at(store, T0 + 53) == ("d", 1)
        assert await _at(store, T0 + 54) is None


async def test_a_release_drops_the_lease_and_does_not_count_the_attempt(
    kind: str, tmp_path: Path
) -> None:
    async with opened(kind, tmp_path, listen_lease_s=10, listen_attempts_max=3) as store:
        await store.append("s", _draft("u1"), WELCOME)
        first = (await store.claim_listen(None, T0)).claimed
        assert first is not None and first.attempt == 1
        await store.release_listen(first)
        assert (await store.claim_listen("s", T0 + 1)).claimed == first  # attempt 1 again
        second = (await store.claim_listen(None, T0 + 11)).claimed  # its lease ran out
        assert second == Claimed(first.message, 2)
        await store.release_listen(second)
        # Back at the front of the backlog, with no lease left to run out as well.
        assert await _at(store, T0 + 500) == ("u1", 2)
        assert await _at(store, T0 + 501) is None
        third = (await store.claim_listen("s", T0 + 510)).claimed
        assert third == Claimed(first.message, 3)
        await store.release_listen(second)  # a stale attempt: claimed again since
        assert await _at(store, T0 + 511) is None  # still leased to the third attempt
        last = await store.claim_listen(None, T0 + 520)
        assert last.claimed is None and [d.attempts for d in last.dropped] == [3]


async def test_deleting_or_resetting_sessions_drops_their_leases(kind: str, tmp_path: Path) -> None:
    async with opened(kind, tmp_path, listen_lease_s=10) as store:
        await store.append("d", _draft("old"), WELCOME)
        await store.append("r", _draft("old r"), WELCOME)
        assert await _at(store, T0) == ("old", 1)
        assert await _at(store, T0 + 1) == ("old r", 1)
        assert await store.delete_session("d")
        again = await store.append("d", _draft("new"), WELCOME)  # the same seq as "old"
        # The lease of "old" went with its session: no second attempt for "new".
        assert await _at(store, T0 + 100) == ("old r", 2)
        outcome = await store.claim_listen(None, T0 + 101)
        assert outcome == ListenClaim(Claimed(again.message, 1), ())
        assert await _at(store, T0 + 102) is None
        await store.reset()
        await store.append("r", _draft("new r"), WELCOME)  # the same seq as "old r"
        assert await _at(store, T0 + 200) == ("new r", 1)
        assert await _at(store, T0 + 1000) == ("new r", 2)  # only the new lease is left
        assert await _at(store, T0 + 1001) is None


async def test_leases_are_bounded_per_session_like_the_backlog(kind: str, tmp_path: Path) -> None:
    async with opened(kind, tmp_path, listen_lease_s=10, listen_backlog_per_session=2) as store:
        seqs = []
        for i in range(3):
            seqs.append((await store.append("s", _draft(f"u{i}"), WELCOME)).message.seq)
            outcome = await store.claim_listen("s", T0 + i)
            assert outcome.claimed is not None and outcome.claimed.attempt == 1
        assert outcome.dropped == (DroppedLease("s", seqs[0], 1),)  # the oldest lease went
        await store.append("t", _draft("t0"), WELCOME)
        assert await _at(store, T0 + 3) == ("t0", 1)  # another session's bound is its own
        assert await _at(store, T0 + 100) == ("u1", 2)
        assert await _at(store, T0 + 101) == ("u2", 2)
        assert await _at(store, T0 + 102) == ("t0", 2)
        assert await _at(store, T0 + 103) is None


async def test_a_lease_of_zero_turns_leases_off(kind: str, tmp_path: Path) -> None:
    async with opened(kind, tmp_path, listen_lease_s=0) as store:
        await store.append("s", _draft("once"), WELCOME)
        assert await _at(store, T0) == ("once", 1)
        assert await _at(store, T0 + 10**6) is None  # handed out once, as before leases


async def test_leases_survive_a_reopen(kind: str, tmp_path: Path) -> None:
    if kind == "memory":
        pytest.skip("memory:// keeps nothing across a reopen by design")
    async with opened(kind, tmp_path, keep=True, listen_lease_s=10) as store:
        await store.append("p", _draft("asked"), WELCOME)
        await store.append("q", _draft("asked q"), WELCOME)
        assert await _at(store, T0, "p") == ("asked", 1)
        assert await _at(store, T0 + 1, "q") == ("asked q", 1)
    async with opened(kind, tmp_path, listen_lease_s=10) as store:
        # A new process knows nothing of them: the answer and the claim read the store.
        await store.append("q", _draft("answered", role="ai"), WELCOME)
        assert await _at(store, T0 + 100) == ("asked", 2)
        assert await _at(store, T0 + 101) is None


# -- exclusive claims (one claim in flight per session), ack and renew ------------------


async def _ex(store: Storage, now: float, session_id: str | None = None) -> tuple[str, int] | None:
    """(content, attempt) of what an exclusive claim at store time `now` hands out."""
    claimed = (await store.claim_listen(session_id, now, exclusive=True)).claimed
    return None if claimed is None else (claimed.message.content, claimed.attempt)


async def test_exclusive_claims_hand_out_one_message_per_session_at_a_time(
    kind: str, tmp_path: Path
) -> None:
    async with opened(kind, tmp_path, listen_lease_s=10) as store:
        for session, content in (("A", "A1"), ("A", "A2"), ("B", "B1")):
            await store.append(session, _draft(content), WELCOME)
        assert await _ex(store, T0) == ("A1", 1)
        assert await _ex(store, T0 + 1) == ("B1", 1)  # A is busy: passed over
        assert await _ex(store, T0 + 2) is None  # A busy, B empty (and busy)
        assert await _ex(store, T0 + 2, "A") is None  # so is a claim of A itself
        await store.append("A", _draft("answer to A1", role="ai"), WELCOME)  # acknowledges
        assert await _ex(store, T0 + 3) == ("A2", 1)
        assert await _ex(store, T0 + 4) is None


async def test_a_non_exclusive_claim_ignores_busy_sessions(kind: str, tmp_path: Path) -> None:
    async with opened(kind, tmp_path, listen_lease_s=10) as store:
        for content in ("A1", "A2"):
            await store.append("A", _draft(content), WELCOME)
        assert await _ex(store, T0) == ("A1", 1)
        assert await _ex(store, T0 + 1) is None
        assert await _at(store, T0 + 1) == ("A2", 1)  # exactly as before `exclusive`


async def test_an_exclusive_claim_takes_a_run_out_lease_before_the_backlog(
    kind: str, tmp_path: Path
) -> None:
    async with opened(kind, tmp_path, listen_lease_s=10) as store:
        for content in ("A1", "A2"):
            await store.append("A", _draft(content), WELCOME)
        await store.append("B", _draft("B1"), WELCOME)
        assert await _ex(store, T0, "A") == ("A1", 1)
        assert await _ex(store, T0 + 9.9, "A") is None  # leased till T0 + 10: busy
        assert await _ex(store, T0 + 10) == ("A1", 2)  # ran out: before A2 and B1
        assert await _ex(store, T0 + 11) == ("B1", 1)
        assert await _ex(store, T0 + 12) is None
        assert await _ex(store, T0 + 20, "A") == ("A1", 3)  # and for a claim of A alone


async def test_a_busy_session_is_passed_over_whole_but_its_used_up_leases_are_dropped(
    kind: str, tmp_path: Path
) -> None:
    async with opened(kind, tmp_path, listen_lease_s=10, listen_attempts_max=2) as store:
        seqs = [(await store.append("A", _draft(f"A{i}"), WELCOME)).message.seq for i in (1, 2)]
        await store.append("A", _draft("A3"), WELCOME)
        await store.append("B", _draft("B1"), WELCOME)
        assert await _at(store, T0, "A") == ("A1", 1)  # non-exclusive: two leases of A
        assert await _at(store, T0 + 10, "A") == ("A1", 2)  # its last attempt, till T0 + 20
        assert await _at(store, T0 + 15, "A") == ("A2", 1)  # till T0 + 25
        # At T0 + 21 A1's lease ran out with no attempt left, A2's still runs: A is busy.
        outcome = await store.claim_listen(None, T0 + 21, exclusive=True)
        assert outcome.dropped == (DroppedLease("A", seqs[0], 2),)  # reported all the same
        claimed = outcome.claimed
        assert claimed is not None and claimed.message.content == "B1"  # not A2, not A3
        assert await _ex(store, T0 + 22) is None
        assert await _at(store, T0 + 25) == ("A2", 2)  # a plain claim takes A's run-out lease


async def test_exclusive_claims_pass_over_many_entries_of_busy_sessions(
    kind: str, tmp_path: Path
) -> None:
    # More than a batch of the Redis script (64) of run-out leases and of backlog entries.
    async with opened(kind, tmp_path, listen_lease_s=10) as store:
        busy = [f"s{i}" for i in range(70)]
        for session in busy:
            for content in ("old", "new"):
                await store.append(session, _draft(f"{session} {content}"), WELCOME)
        for session in busy:
            assert await _at(store, T0, session) == (f"{session} old", 1)
        await store.append("free", _draft("free 1"), WELCOME)
        assert await _at(store, T0 + 5, "free") == ("free 1", 1)  # runs out at T0 + 15
        for session in busy:  # each s* holds leases till T0 + 10 (old) and T0 + 19 (new)
            assert await _at(store, T0 + 9, session) == (f"{session} new", 1)
        for i in range(80):
            await store.append(busy[0], _draft(f"more {i}"), WELCOME)
        await store.append("free", _draft("free 2"), WELCOME)
        assert await _ex(store, T0 + 16) == ("free 1", 2)  # after 70 run-out leases of s*
        await store.append("free", _draft("free answered", role="ai"), WELCOME)
        assert await _ex(store, T0 + 17) == ("free 2", 1)  # after 80 entries of s0
        assert await _ex(store, T0 + 18) is None
        assert await _ex(store, T0 + 19) == ("s0 old", 2)  # every s* is free again


async def test_concurrent_exclusive_claims_take_one_message_per_session(
    kind: str, tmp_path: Path
) -> None:
    async with opened(kind, tmp_path, listen_lease_s=10) as store:
        for i in range(3):
            for session in ("a", "b", "c"):
                await store.append(session, _draft(f"{session}{i}"), WELCOME)
        # Queued together (one SQLite group, one script each in Redis): still one each.
        got = await asyncio.gather(*(_ex(store, T0) for _ in range(10)))
        assert sorted(g for g in got if g is not None) == [("a0", 1), ("b0", 1), ("c0", 1)]


async def test_an_exclusive_claim_drops_backlog_entries_trimmed_from_history(
    kind: str, tmp_path: Path
) -> None:
    async with opened(kind, tmp_path, history_limit=5, listen_lease_s=10) as store:
        for i in range(20):
            await store.append("t", _draft(f"m{i}"), WELCOME)
        kept = await store.history("t")
        assert len(kept) < 20
        claimed = (await store.claim_listen(None, T0, exclusive=True)).claimed
        assert claimed == Claimed(kept[0], 1)  # the oldest still in history
        await store.append("t", _draft("answer", role="ai"), WELCOME)
        assert await _ex(store, T0 + 1, "t") == (kept[1].content, 1)


async def test_with_leases_off_an_exclusive_claim_is_a_plain_one(kind: str, tmp_path: Path) -> None:
    # No leases exist, so no session is ever busy: claims go on in backlog order.
    async with opened(kind, tmp_path, listen_lease_s=0) as store:
        for session, content in (("A", "A1"), ("A", "A2"), ("B", "B1")):
            await store.append(session, _draft(content), WELCOME)
        assert await _ex(store, T0) == ("A1", 1)
        assert await _ex(store, T0, "A") == ("A2", 1)
        assert await _ex(store, T0) == ("B1", 1)
        assert await _ex(store, T0 + 10**6) is None


async def test_an_ack_settles_a_claim_without_an_answer(kind: str, tmp_path: Path) -> None:
    async with opened(kind, tmp_path, listen_lease_s=10) as store:
        for content in ("A1", "A2"):
            await store.append("A", _draft(content), WELCOME)
        first = (await store.claim_listen(None, T0, exclusive=True)).claimed
        assert first is not None and first.message.content == "A1"
        await store.ack_listen(first)
        await store.ack_listen(first)  # the lease is gone: nothing happens
        assert await _ex(store, T0 + 1) == ("A2", 1)  # A is no longer busy
        assert await _ex(store, T0 + 11) == ("A2", 2)  # A1 is never offered again
        assert await _ex(store, T0 + 21, "A") == ("A2", 3)
        assert await _ex(store, T0 + 1000) is None
        assert [m.content for m in await store.history("A")] == ["welcome", "A1", "A2"]


async def test_an_ack_of_an_attempt_claimed_again_since_does_nothing(
    kind: str, tmp_path: Path
) -> None:
    async with opened(kind, tmp_path, listen_lease_s=10) as store:
        await store.append("A", _draft("A1"), WELCOME)
        await store.append("A", _draft("A2"), WELCOME)
        first = (await store.claim_listen("A", T0, exclusive=True)).claimed
        second = (await store.claim_listen("A", T0 + 10, exclusive=True)).claimed
        assert first is not None and second == Claimed(first.message, 2)
        await store.ack_listen(first)  # stale: the lease is on the second attempt
        assert await _ex(store, T0 + 15) is None  # still busy with the second
        await store.ack_listen(second)
        assert await _ex(store, T0 + 16) == ("A2", 1)


async def test_an_ack_leaves_released_answered_and_other_sessions_messages_alone(
    kind: str, tmp_path: Path
) -> None:
    async with opened(kind, tmp_path, listen_lease_s=10) as store:
        await store.append("r", _draft("released"), WELCOME)
        released = (await store.claim_listen("r", T0)).claimed
        assert released is not None
        await store.release_listen(released)
        await store.ack_listen(released)  # no lease: it stays in the backlog
        assert await _at(store, T0 + 1) == ("released", 1)
        await store.append("r", _draft("answer", role="ai"), WELCOME)
        await store.ack_listen(released)  # answered already: nothing to do
        # A session deleted and made anew: the same seq and attempt, another message.
        await store.append("d", _draft("old"), WELCOME)
        old = (await store.claim_listen("d", T0 + 2)).claimed
        assert old is not None
        assert await store.delete_session("d")
        await store.ack_listen(old)  # deleted: nothing happens
        await store.append("d", _draft("new"), WELCOME)
        new = (await store.claim_listen("d", T0 + 3)).claimed
        assert new is not None and (new.message.seq, new.attempt) == (old.message.seq, 1)
        await store.ack_listen(old)
        assert not await store.renew_listen(old, T0 + 4)
        assert await _ex(store, T0 + 4, "d") is None  # the new lease still holds d
        assert await _at(store, T0 + 13) == ("new", 2)


async def test_an_ack_with_leases_off_does_nothing(kind: str, tmp_path: Path) -> None:
    async with opened(kind, tmp_path, listen_lease_s=0) as store:
        await store.append("s", _draft("once"), WELCOME)
        claimed = (await store.claim_listen("s", T0, exclusive=True)).claimed
        assert claimed is not None
        await store.ack_listen(claimed)
        assert not await store.renew_listen(claimed, T0)  # there is no lease to renew
        assert await _ex(store, T0 + 10**6) is None


async def test_a_renewal_moves_the_deadline_while_the_lease_is_held(
    kind: str, tmp_path: Path
) -> None:
    async with opened(kind, tmp_path, listen_lease_s=10) as store:
        await store.append("A", _draft("A1"), WELCOME)
        await store.append("B", _draft("B1"), WELCOME)
        first = (await store.claim_listen("A", T0, exclusive=True)).claimed
        assert first is not None
        assert await _ex(store, T0 + 1, "B") == ("B1", 1)  # runs out at T0 + 11
        assert await store.renew_listen(first, T0 + 8)  # now till T0 + 18
        assert await _ex(store, T0 + 12) == ("B1", 2)  # B's ran out first, A's runs
        assert await _ex(store, T0 + 17.9, "A") is None
        assert await store.renew_listen(first, T0 + 25)  # ran out, but nobody took it
        assert await _ex(store, T0 + 34, "A") is None
        assert await _ex(store, T0 + 35, "A") == ("A1", 2)
        assert not await store.renew_listen(first, T0 + 36)  # claimed again since


async def test_a_lease_gone_cannot_be_renewed(kind: str, tmp_path: Path) -> None:
    async with opened(kind, tmp_path, listen_lease_s=10) as store:
        for content in ("a", "b", "c"):
            await store.append("s", _draft(content), WELCOME)
        answered = (await store.claim_listen("s", T0)).claimed
        assert answered is not None
        await store.append("s", _draft("answer", role="ai"), WELCOME)
        assert not await store.renew_listen(answered, T0 + 1)
        acked = (await store.claim_listen("s", T0 + 1)).claimed
        assert acked is not None
        await store.ack_listen(acked)
        assert not await store.renew_listen(acked, T0 + 2)
        released = (await store.claim_listen("s", T0 + 2)).claimed
        assert released is not None
        await store.release_listen(released)
        assert not await store.renew_listen(released, T0 + 3)
        deleted = (await store.claim_listen("s", T0 + 3)).claimed
        assert deleted == released
        assert await store.delete_session("s")
        assert not await store.renew_listen(deleted, T0 + 4)


# -- stopped replies ------------------------------------------------------------------------


async def test_a_stopped_reply_is_stored_and_sent_marked_as_stopped(
    kind: str, tmp_path: Path
) -> None:
    async with opened(kind, tmp_path) as store:
        await store.append("s", _draft("question"), WELCOME)
        stopped = Draft.build("ai", "half an answ", key="k-stop", stopped=True)
        posted = await store.append("s", stopped, WELCOME)
        assert posted.message.stopped and posted.stored == (posted.message,)
        assert posted.message.to_dict()["stopped"] is True
        again = await store.append("s", stopped, WELCOME)  # a duplicate reads it back
        assert again.duplicate and again.message == posted.message
        await store.append("s", _draft("go on"), WELCOME)
        history = await store.history("s")
        assert [m.stopped for m in history] == [False, False, True, False]
        assert history[2] == posted.message
        assert "stopped" not in history[1].to_dict() and "stopped" not in history[3].to_dict()
        assert history[2].to_dict()["stopped"] is True
        assert await store.history("s", max_bytes=10**6) == history
        last_ai = await store.last_message("s", "ai")
        assert last_ai is not None and last_ai.stopped and last_ai.content == "half an answ"
        last = await store.last_message("s", None)
        assert last is not None and not last.stopped
        created = await store.create_session("new", (Draft("ai", "cut", "text", "w", None, True),))
        assert created is not None and created[0].stopped
        assert [m.stopped for m in await store.history("new")] == [True]


async def test_a_stopped_reply_survives_a_reopen(kind: str, tmp_path: Path) -> None:
    if kind == "memory":
        pytest.skip("memory:// keeps nothing across a reopen by design")
    async with opened(kind, tmp_path, keep=True) as store:
        await store.append("p", Draft.build("ai", "cut short", stopped=True), WELCOME)
        await store.append("p", _draft("plain", role="ai"), WELCOME)
    async with opened(kind, tmp_path) as store:
        assert [m.stopped for m in await store.history("p")] == [False, True, False]
