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
