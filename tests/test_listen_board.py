"""ListenBoard wake-ups (with a real memory store) and KeyedLocks, in process."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable

import pytest

from bridge.errors import RateLimited
from bridge.listen import ListenBoard
from bridge.models import Draft, StoredMessage
from bridge.ordering import KeyedLocks
from bridge.storage import Claimed
from bridge.storage.memory import MemoryStorage


async def _until(condition: Callable[[], bool]) -> None:
    """Let other tasks run until `condition` holds (bounded)."""
    async with asyncio.timeout(5):
        while not condition():
            await asyncio.sleep(0)  # poll: one loop iteration


class Listens:
    """Listen calls on one board over one real store, counting each call's claims."""

    def __init__(self, board: ListenBoard, store: MemoryStorage) -> None:
        self.board = board
        self.store = store
        self.claims: Counter[str] = Counter()  # per call name
        self.started = 0

    def claim_of(
        self, name: str, session_id: str | None, now: Callable[[], float | None] = lambda: None
    ) -> Callable[[], Awaitable[Claimed | None]]:
        """A claim for call `name`, at the store clock reading `now()` (None: real time)."""

        async def claim() -> Claimed | None:
            self.claims[name] += 1
            return (await self.store.claim_listen(session_id, now())).claimed

        return claim

    def start(
        self,
        name: str,
        session_id: str | None,
        timeout: float = 10,
        now: Callable[[], float | None] = lambda: None,
    ) -> asyncio.Task[Claimed | None]:
        """One Listen call (see `parked`)."""
        self.started += 1
        return asyncio.create_task(
            self.board.wait(
                session_id,
                self.claim_of(name, session_id, now),
                self.store.release_listen,
                timeout,
            ),
            name=name,
        )

    async def parked(self, waiting: int) -> None:
        """Until `waiting` calls are in the board and every call started has claimed."""
        await _until(lambda: self.board.waiting == waiting and len(self.claims) == self.started)

    async def post(self, session_id: str, content: str) -> StoredMessage:
        """Store a user message and tell the board, as the service does."""
        appended = await self.store.append(session_id, Draft.build("user", content), ())
        self.board.notify(session_id)
        return appended.message


def _listens(max_waiters: int = 100, listen_lease_s: float = 300.0) -> Listens:
    store = MemoryStorage(listen_lease_s=listen_lease_s)
    return Listens(ListenBoard(max_waiters=max_waiters), store)


async def test_waiters_woken_each_item_claimed_once() -> None:
    on = _listens()
    waiters = [on.start(f"w{i}", None, 5) for i in range(3)]
    await on.parked(3)  # all parked
    for item in ("1", "2", "3"):
        await on.post("s", item)
    got = await asyncio.gather(*waiters)
    assert sorted(m.message.content for m in got if m is not None) == ["1", "2", "3"]


async def test_timeout_returns_none_and_limit_refuses() -> None:
    on = _listens(max_waiters=1)
    parked = on.start("parked", None, 0.2)
    await on.parked(1)
    with pytest.raises(RateLimited):
        await on.board.wait(None, on.claim_of("refused", None), on.store.release_listen, 1)
    assert on.claims["refused"] == 0
    assert await parked is None and on.board.waiting == 0


async def test_a_message_wakes_one_eligible_waiter_the_oldest_and_no_other() -> None:
    on = _listens()
    others = [on.start(f"other{i}", f"other{i}", 10) for i in range(20)]
    mine = [on.start(f"mine{i}", "mine", 10) for i in range(3)]
    await on.parked(23)
    assert sum(on.claims.values()) == 23  # each claimed once on arrival
    await on.post("mine", "hello")
    got = await mine[0]
    assert got is not None and got.message.content == "hello"
    # Exactly one more claim, by the oldest waiter of that session; nobody else stirred.
    assert sum(on.claims.values()) == 24 and on.claims["mine0"] == 2
    assert on.board.waiting == 22
    await on.post("other7", "for seven")
    seven = await others[7]
    assert seven is not None and seven.message.content == "for seven"
    assert sum(on.claims.values()) == 25
    on.board.close()
    await asyncio.gather(*others, *mine[1:])


async def test_a_waiter_for_any_session_is_eligible_oldest_first() -> None:
    on = _listens()
    anyone = on.start("any", None)
    await on.parked(1)
    mine = on.start("mine", "mine")
    await on.parked(2)
    await on.post("mine", "first")  # the waiter for any session came first
    got = await anyone
    assert got is not None and got.message.content == "first" and on.claims["mine"] == 1
    await on.post("mine", "second")
    got = await mine
    assert got is not None and got.message.content == "second"


async def test_a_woken_waiter_that_finds_nothing_waits_again() -> None:
    # Two boards on one store: two bridge instances, each waking one waiter per message.
    store = MemoryStorage()
    here = Listens(ListenBoard(max_waiters=10), store)
    there = Listens(ListenBoard(max_waiters=10), store)
    a, b = here.start("a", "s"), there.start("b", "s")
    await here.parked(1)
    await there.parked(1)
    await here.post("s", "one")
    there.board.notify("s")  # the other instance hears the same message
    done, _ = await asyncio.wait({a, b}, return_when=asyncio.FIRST_COMPLETED)
    loser = b if a in done else a
    loser_board = there.board if loser is b else here.board
    await _until(lambda: here.claims[loser.get_name()] + there.claims[loser.get_name()] == 2)
    assert not loser.done() and loser_board.waiting == 1  # lost the race, waits again
    await store.append("s", Draft.build("user", "two"), ())
    loser_board.notify("s")
    got = await loser
    assert got is not None and got.message.content == "two"


async def test_a_woken_waiter_cancelled_before_it_claims_hands_the_wake_on() -> None:
    on = _listens()
    first = on.start("first", "s")
    await on.parked(1)
    second = on.start("second", "s")
    await on.parked(2)
    await on.store.append("s", Draft.build("user", "hello"), ())
    on.board.notify("s")  # wakes `first` only ...
    first.cancel()  # ... whose client hangs up before it runs again
    with pytest.raises(asyncio.CancelledError):
        await first
    got = await second
    assert got is not None and got.message.content == "hello"
    assert on.claims["first"] == 1  # left without claiming


async def test_a_waiter_cancelled_while_it_waits_leaves_without_claiming() -> None:
    on = _listens(max_waiters=1)
    gone = on.start("gone", None)
    await on.parked(1)
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert on.board.waiting == 0  # the cap counts live waiters only
    await on.store.append("s", Draft.build("user", "kept"), ())
    on.board.notify("s")
    assert on.claims["gone"] == 1
    nxt = await on.board.wait(None, on.claim_of("next", None), on.store.release_listen, 1)
    assert nxt is not None and nxt.message.content == "kept"


async def test_a_message_claimed_by_a_cancelled_call_is_released_to_the_next() -> None:
    on = _listens()
    claimed = asyncio.Event()
    gate = asyncio.Event()

    async def slow_claim() -> Claimed | None:
        found = (await on.store.claim_listen("s")).claimed
        if found is not None:
            claimed.set()
            await gate.wait()  # the store has handed it out; the answer is on its way
        return found

    hung_up = asyncio.create_task(on.board.wait("s", slow_claim, on.store.release_listen, 10))
    await on.parked(1)
    await on.post("s", "precious")
    await claimed.wait()
    hung_up.cancel()  # the HTTP client hangs up while the claim is in flight
    with pytest.raises(asyncio.CancelledError):
        await hung_up
    later = on.start("later", "s")
    await on.parked(1)
    gate.set()  # the shielded claim finishes; its message goes back and wakes `later`
    got = await later
    assert got is not None and got.message.content == "precious"


async def test_a_released_message_goes_to_a_new_listen_too() -> None:
    on = _listens()
    gate = asyncio.Event()
    claimed = asyncio.Event()

    async def slow_claim() -> Claimed | None:
        found = (await on.store.claim_listen(None)).claimed
        if found is not None:
            claimed.set()
            await gate.wait()
        return found

    await on.store.append("s", Draft.build("user", "precious"), ())
    hung_up = asyncio.create_task(on.board.wait(None, slow_claim, on.store.release_listen, 10))
    await claimed.wait()
    hung_up.cancel()
    with pytest.raises(asyncio.CancelledError):
        await hung_up
    assert (await on.store.claim_listen(None)).claimed is None  # with the cancelled claim
    gate.set()
    got: list[Claimed | None] = []

    async def listen_once() -> bool:
        got.append(await on.board.wait(None, on.claim_of("n", None), on.store.release_listen, 0))
        return got[-1] is not None

    async with asyncio.timeout(5):
        while not await listen_once():
            await asyncio.sleep(0)  # poll, bounded above: the release is one store call away
    assert got[-1] is not None and got[-1].message.content == "precious"


async def test_a_waiter_that_took_another_sessions_message_hands_the_wake_on() -> None:
    on = _listens()
    anyone = on.start("any", None)
    await on.parked(1)
    mine = on.start("mine", "mine")
    await on.parked(2)
    # An older message nobody was told about here (released on another instance).
    older = await on.store.append("elsewhere", Draft.build("user", "older"), ())
    await on.post("mine", "for mine")  # wakes `any`, the oldest eligible ...
    took = await anyone
    assert (
        took is not None and took.message == older.message
    )  # ... which takes the oldest message of any session
    got = await mine  # so the wake-up went on to the waiter for "mine"
    assert got is not None and got.message.content == "for mine"


async def test_a_notification_during_the_first_claim_is_not_lost() -> None:
    on = _listens()
    looked = asyncio.Event()
    gate = asyncio.Event()
    calls = 0

    async def claim() -> Claimed | None:
        nonlocal calls
        calls += 1
        found = (await on.store.claim_listen("s")).claimed
        if calls == 1:
            looked.set()
            await gate.wait()  # found nothing; the message arrives before it answers
        return found

    waiter = asyncio.create_task(on.board.wait("s", claim, on.store.release_listen, 10))
    await looked.wait()
    await on.post("s", "just now")
    gate.set()
    got = await waiter
    assert got is not None and got.message.content == "just now" and calls == 2


async def test_close_answers_every_waiter_and_new_ones_without_claiming() -> None:
    on = _listens()
    waiters = [on.start(f"w{i}", "s" if i % 2 else None) for i in range(4)]
    await on.parked(4)
    on.board.close()
    assert await asyncio.gather(*waiters) == [None] * 4
    await on.store.append("s", Draft.build("user", "late"), ())
    assert await on.board.wait(None, on.claim_of("late", None), on.store.release_listen, 5) is None
    assert on.claims["late"] == 0 and on.board.waiting == 0
    assert (await on.store.claim_listen(None)).claimed is not None  # kept for the restart


async def test_waiters_that_leave_leave_nothing_behind() -> None:
    on = _listens()
    tasks = [on.start(f"t{i}", f"s{i}", 0.01) for i in range(50)]
    assert await asyncio.gather(*tasks) == [None] * 50
    assert on.board.waiting == 0 and not on.board._queues  # no queue per session kept


async def test_keyed_locks_serialise_per_key_and_forget_idle_keys() -> None:
    locks = KeyedLocks()
    order: list[str] = []

    async def work(key: str, tag: str, gate: asyncio.Event | None = None) -> None:
        async with locks(key):
            order.append(f"{tag}+")
            if gate is not None:
                await gate.wait()
            order.append(f"{tag}-")

    gate = asyncio.Event()
    first = asyncio.create_task(work("k", "a", gate))
    await _until(lambda: "a+" in order)  # "a" holds the lock
    second = asyncio.create_task(work("k", "b"))
    other = asyncio.create_task(work("j", "c"))
    await other  # another key is not held up
    gate.set()
    await asyncio.gather(first, second)
    assert order.index("a-") < order.index("b+") and "c-" in order
    assert len(locks) == 0


async def test_keyed_locks_forget_a_waiter_cancelled_before_its_turn() -> None:
    locks = KeyedLocks()
    held = asyncio.Event()
    release = asyncio.Event()

    async def holder() -> None:
        async with locks("k"):
            held.set()
            await release.wait()

    async def waiter() -> None:
        async with locks("k"):
            raise AssertionError("a cancelled waiter never gets the lock")

    first = asyncio.create_task(holder())
    await held.wait()
    second = asyncio.create_task(waiter())
    await _until(lambda: locks._locks["k"][1] == 2)  # the waiter is queued
    second.cancel()
    with pytest.raises(asyncio.CancelledError):
        await second
    release.set()
    await first
    assert len(locks) == 0
    async with locks("k"):  # the key is usable again
        assert len(locks) == 1


async def test_a_waiter_woken_when_a_lease_runs_out_takes_the_message_again() -> None:
    # The service wakes a waiter of the session when a lease it granted runs out (no new
    # message comes to do it); that waiter's claim must then find the message.
    clock = [1_000_000.0]  # the store's clock, moved by hand
    on = _listens(listen_lease_s=10)
    await on.post("s", "unanswered")
    first = await on.start("run 1", "s", 0, now=lambda: clock[0])
    assert first is not None and first.attempt == 1
    again = on.start("run 2", "s", now=lambda: clock[0])
    await on.parked(1)  # it claimed once and found nothing: the message is leased
    clock[0] += 10  # nobody answered within the lease
    on.board.notify("s")  # what the service's lease timer does
    got = await again
    assert got is not None and got.message == first.message and got.attempt == 2
    assert on.claims["run 2"] == 2
