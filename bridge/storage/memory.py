"""`memory://`: everything in this process; gone when it exits (a new epoch tells clients)."""

from __future__ import annotations

import itertools
import secrets
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from bridge.models import Draft, SessionInfo, StoredMessage, Template
from bridge.storage.base import (
    Appended,
    Claimed,
    DroppedLease,
    ListenClaim,
    check_page,
    content_bytes,
    sessions_quota,
)

__all__ = ["MemoryStorage"]


@dataclass(slots=True)
class _Lease:
    """A claimed message awaiting its answer (an `ai` message in its session)."""

    message: StoredMessage
    deadline: float
    attempts: int


@dataclass(slots=True)
class _Session:
    created_at: float
    messages: list[StoredMessage] = field(default_factory=list)
    last_seq: int = 0
    keys: dict[str, StoredMessage] | None = None  # made on the first idempotency key
    listen: deque[int] = field(default_factory=deque)  # seqs of its backlog, oldest first
    # seq -> attempts already made, for backlog entries given back by `release_listen`.
    tries: dict[int, int] = field(default_factory=dict)
    leases: dict[int, _Lease] = field(default_factory=dict)  # seq -> lease, claim order

    def add(self, session_id: str, draft: Draft) -> StoredMessage:
        self.last_seq += 1
        message = StoredMessage.from_draft(session_id, self.last_seq, draft)
        self.messages.append(message)
        if draft.key:
            if self.keys is None:
                self.keys = {}
            self.keys[draft.key] = message
        return message

    def kept(self, seq: int) -> StoredMessage | None:
        """The message `seq` if history still holds it."""
        if not self.messages:
            return None
        index = seq - self.messages[0].seq
        return self.messages[index] if 0 <= index < len(self.messages) else None

    def trim(self, limit: int) -> None:
        # Trim in chunks of a tenth so that the cost is amortised over many appends.
        if len(self.messages) <= limit + max(1, limit // 10):
            return
        del self.messages[: len(self.messages) - limit]
        first = self.messages[0].seq
        if self.keys:
            self.keys = {k: m for k, m in self.keys.items() if m.seq >= first}


class MemoryStorage:
    """A `Storage` held in dicts; for tests, demos and benchmarks."""

    def __init__(
        self,
        *,
        history_limit: int = 10_000,
        listen_backlog_per_session: int = 1_000,
        sessions_max: int = 100_000,
        listen_lease_s: float = 300.0,
        listen_attempts_max: int = 3,
    ) -> None:
        self._epoch = uuid.uuid4().hex
        self._sessions: dict[str, _Session] = {}  # insertion order is creation order
        self._template: Template | None = None
        self._history_limit = history_limit
        self._backlog_limit = listen_backlog_per_session
        self._sessions_max = sessions_max
        # The Listen backlog of every session in claim order: (session id, seq) -> message.
        # Each session's `listen` holds the same entries in the same order, so that its
        # oldest is found and its bound kept without a scan of the others.
        self._listen: OrderedDict[tuple[str, int], StoredMessage] = OrderedDict()
        # Every lease in claim order (a lease taken again moves to the end). With one lease
        # length and a clock that does not run back, that is deadline order, so the first
        # entry is the one that ran out longest ago. Each session's `leases` holds its own.
        self._leases: OrderedDict[tuple[str, int], _Lease] = OrderedDict()
        self._lease_s = listen_lease_s
        self._attempts_max = listen_attempts_max
        self._token_secret: bytes | None = None

    @property
    def epoch(self) -> str:
        return self._epoch

    @property
    def url(self) -> str:
        return "memory://"

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def ping(self) -> None:
        return None

    def _create(
        self, session_id: str, seed: Sequence[Draft]
    ) -> tuple[_Session, list[StoredMessage]]:
        if len(self._sessions) >= self._sessions_max:
            raise sessions_quota(len(self._sessions))
        session = _Session(created_at=time.time())
        self._sessions[session_id] = session
        return session, [self._add(session_id, session, d) for d in seed]

    def _add(self, session_id: str, session: _Session, draft: Draft) -> StoredMessage:
        message = session.add(session_id, draft)
        if message.role == "user":
            self._listen[(session_id, message.seq)] = message
            session.listen.append(message.seq)
            if len(session.listen) > self._backlog_limit:  # this session's oldest goes
                evicted = session.listen.popleft()
                del self._listen[(session_id, evicted)]
                session.tries.pop(evicted, None)
        elif message.role == "ai" and session.leases:
            # An answer: every message of the session Listen handed out is answered.
            for seq in session.leases:
                del self._leases[(session_id, seq)]
            session.leases.clear()
        return message

    async def create_session(
        self, session_id: str, seed: Sequence[Draft]
    ) -> tuple[StoredMessage, ...] | None:
        if session_id in self._sessions:
            return None
        return tuple(self._create(session_id, seed)[1])

    async def append(self, session_id: str, draft: Draft, seed: Sequence[Draft]) -> Appended:
        session = self._sessions.get(session_id)
        stored: list[StoredMessage] = []
        if session is None:
            session, stored = self._create(session_id, seed)
        elif draft.key and session.keys and (first := session.keys.get(draft.key)):
            return Appended(first, (), True)
        message = self._add(session_id, session, draft)
        session.trim(self._history_limit)
        stored.append(message)
        return Appended(message, tuple(stored), False)

    async def history(
        self,
        session_id: str,
        *,
        after: int = 0,
        before: int | None = None,
        last: int | None = None,
        max_bytes: int | None = None,
    ) -> list[StoredMessage]:
        session = self._sessions.get(session_id)
        if session is None or not session.messages:
            return []
        messages = session.messages
        first = messages[0].seq
        start = max(0, after + 1 - first)
        stop = len(messages) if before is None else max(0, before - first)
        if last is not None:
            start = max(start, stop - last)
        if max_bytes is not None and start < stop:
            # Always the first message; then as many as fit in `max_bytes` with it.
            total = content_bytes(messages[start])
            end = start + 1
            while end < stop:
                total += content_bytes(messages[end])
                if total > max_bytes:
                    break
                end += 1
            stop = end
        return messages[start:stop]

    async def last_message(self, session_id: str, role: str | None) -> StoredMessage | None:
        session = self._sessions.get(session_id)
        if session is None:
            return None
        for message in reversed(session.messages):
            if role is None or message.role == role:
                return message
        return None

    async def session_info(self, session_id: str) -> SessionInfo | None:
        session = self._sessions.get(session_id)
        if session is None:
            return None
        return SessionInfo(session_id, session.created_at, session.last_seq, len(session.messages))

    async def sessions(self, *, offset: int = 0, limit: int | None = None) -> list[str]:
        check_page(offset, limit)
        stop = None if limit is None else offset + limit
        return list(itertools.islice(self._sessions, offset, stop))

    async def last_session(self) -> str | None:
        return next(reversed(self._sessions), None)

    async def delete_session(self, session_id: str) -> bool:
        session = self._sessions.pop(session_id, None)
        if session is None:
            return False
        for seq in session.listen:
            del self._listen[(session_id, seq)]
        for seq in session.leases:
            del self._leases[(session_id, seq)]
        return True

    async def reset(self) -> None:
        self._sessions.clear()
        self._listen.clear()
        self._leases.clear()

    async def load_template(self) -> Template | None:
        return self._template

    async def save_template(self, template: Template) -> None:
        self._template = template

    async def claim_listen(
        self, session_id: str | None, now: float | None = None, *, exclusive: bool = False
    ) -> ListenClaim:
        when = time.time() if now is None else now
        dropped: list[DroppedLease] = []
        # Exclusive: session id -> whether it holds a running lease (None: not exclusive).
        # Without leases no session is ever busy, and exclusive claims are plain ones.
        busy: dict[str, bool] | None = {} if exclusive and self._lease_s > 0 else None
        if self._lease_s > 0:
            while (lease := self._expired(session_id, when, busy)) is not None:
                message = lease.message
                session = self._sessions[message.session_id]
                self._unlease(session, message)
                if lease.attempts >= self._attempts_max:
                    dropped.append(DroppedLease(message.session_id, message.seq, lease.attempts))
                elif session.kept(message.seq) is message:  # else trimmed: gone for Listen
                    claimed = self._lease(session, message, lease.attempts + 1, when, dropped)
                    return ListenClaim(claimed, tuple(dropped))
        if busy is not None:
            return self._claim_free(session_id, when, busy, dropped)
        while True:
            if session_id is None:
                if not self._listen:
                    return ListenClaim(None, tuple(dropped))
                (owner, seq), message = self._listen.popitem(last=False)
                session = self._sessions[owner]
                session.listen.popleft()  # the same entry: both are in claim order
            else:
                session_or_none = self._sessions.get(session_id)
                if session_or_none is None or not session_or_none.listen:
                    return ListenClaim(None, tuple(dropped))
                session = session_or_none
                seq = session.listen.popleft()
                message = self._listen.pop((session_id, seq))
            before = session.tries.pop(seq, 0)
            # A message trimmed from history since is gone for Listen too.
            if session.kept(seq) is message:
                claimed = self._lease(session, message, before + 1, when, dropped)
                return ListenClaim(claimed, tuple(dropped))

    def _claim_free(
        self,
        session_id: str | None,
        now: float,
        busy: dict[str, bool],
        dropped: list[DroppedLease],
    ) -> ListenClaim:
        """An exclusive claim from the backlog: its oldest entry of a session that holds
        no running lease. Entries of busy sessions are passed over and stay."""
        if session_id is None:
            entries: Iterable[tuple[str, int]] = self._listen
        else:
            session = self._sessions.get(session_id)
            if session is None or self._busy(session_id, now, busy):
                return ListenClaim(None, tuple(dropped))
            entries = ((session_id, seq) for seq in session.listen)
        found: tuple[str, int] | None = None
        stale: list[tuple[str, int]] = []  # entries whose message was trimmed since
        for entry in entries:
            if self._busy(entry[0], now, busy):
                continue
            owner_session = self._sessions[entry[0]]
            if owner_session.kept(entry[1]) is self._listen[entry]:
                found = entry
                break
            stale.append(entry)
        for entry in [*stale, *([found] if found else [])]:
            owner_session = self._sessions[entry[0]]
            # The oldest entry of its session: the scan passed over busy sessions whole,
            # and each session's `listen` is in the same order as `_listen`.
            owner_session.listen.popleft()
            message = self._listen.pop(entry)
            before = owner_session.tries.pop(entry[1], 0)
            if entry == found:
                claimed = self._lease(owner_session, message, before + 1, now, dropped)
                return ListenClaim(claimed, tuple(dropped))
        return ListenClaim(None, tuple(dropped))

    def _busy(self, session_id: str, now: float, busy: dict[str, bool]) -> bool:
        """Whether the session holds a lease whose deadline is after `now` (cached in
        `busy` for one claim: nothing a claim does before it hands out changes that)."""
        known = busy.get(session_id)
        if known is None:
            session = self._sessions.get(session_id)
            known = busy[session_id] = session is not None and any(
                lease.deadline > now for lease in session.leases.values()
            )
        return known

    def _expired(
        self, session_id: str | None, now: float, busy: dict[str, bool] | None
    ) -> _Lease | None:
        """The lease (of the session, or of any) that ran out longest ago, if any; with
        `busy` (an exclusive claim), passing over those of busy sessions unless their
        attempts are used up (those are dropped whatever the session does)."""
        if session_id is None:
            leases: Iterable[_Lease] = self._leases.values()
        else:
            session = self._sessions.get(session_id)
            leases = session.leases.values() if session else ()
        for lease in leases:
            if lease.deadline > now:
                return None
            if (
                busy is None
                or lease.attempts >= self._attempts_max
                or not self._busy(lease.message.session_id, now, busy)
            ):
                return lease
        return None

    def _lease(
        self,
        session: _Session,
        message: StoredMessage,
        attempt: int,
        now: float,
        dropped: list[DroppedLease],
    ) -> Claimed:
        """Record the claim of `message` as attempt `attempt`, until `now` + the lease."""
        if self._lease_s > 0:
            entry = (message.session_id, message.seq)
            session.leases[message.seq] = self._leases[entry] = _Lease(
                message, now + self._lease_s, attempt
            )
            if len(session.leases) > self._backlog_limit:  # the session's oldest lease goes
                oldest = next(iter(session.leases.values()))
                self._unlease(session, oldest.message)
                dropped.append(
                    DroppedLease(message.session_id, oldest.message.seq, oldest.attempts)
                )
        return Claimed(message, attempt)

    def _unlease(self, session: _Session, message: StoredMessage) -> None:
        del session.leases[message.seq]
        del self._leases[(message.session_id, message.seq)]

    async def release_listen(self, claimed: Claimed) -> None:
        message = claimed.message
        session = self._sessions.get(message.session_id)
        entry = (message.session_id, message.seq)
        if session is None or entry in self._listen:
            return
        kept = session.kept(message.seq)
        if kept is None or kept.id != message.id:  # trimmed, or a later session's message
            return
        lease = session.leases.get(message.seq)
        if lease is not None:
            if lease.attempts != claimed.attempt:  # its lease ran out and it was claimed again
                return
            self._unlease(session, kept)
        if claimed.attempt > 1:  # the attempts before this one still count
            session.tries[message.seq] = claimed.attempt - 1
        self._listen[entry] = kept
        self._listen.move_to_end(entry, last=False)
        session.listen.appendleft(message.seq)

    def _held(self, claimed: Claimed) -> tuple[_Session, _Lease] | None:
        """The session and lease of `claimed` if its lease is still on this attempt."""
        message = claimed.message
        session = self._sessions.get(message.session_id)
        lease = session.leases.get(message.seq) if session else None
        if session is None or lease is None:
            return None
        if lease.attempts != claimed.attempt or lease.message.id != message.id:
            return None  # claimed again since, or another message of a later session
        return session, lease

    async def ack_listen(self, claimed: Claimed) -> None:
        held = self._held(claimed)
        if held is not None:
            self._unlease(held[0], held[1].message)

    async def renew_listen(self, claimed: Claimed, now: float | None = None) -> bool:
        held = self._held(claimed)
        if held is None or self._lease_s <= 0:
            return False
        lease = held[1]
        lease.deadline = (time.time() if now is None else now) + self._lease_s
        # The latest deadline: last in claim order, like a lease just taken.
        entry = (lease.message.session_id, lease.message.seq)
        self._leases.move_to_end(entry)
        held[0].leases[lease.message.seq] = held[0].leases.pop(lease.message.seq)
        return True

    async def token_secret(self) -> bytes:
        # This process only: tokens signed with it die with the process, like the history.
        if self._token_secret is None:
            self._token_secret = secrets.token_bytes(32)
        return self._token_secret
