"""The typed interface every store implements, and what an append returns.

A store owns everything that must outlive a process: sessions, their messages and
`seq` counters, idempotency keys, the Listen backlog, the template, the epoch and the
secret that signs session tokens. It enforces two bounds itself, atomically with the
writes they limit: `sessions_max` sessions, and `listen_backlog_per_session` unclaimed
Listen messages per session (so at most `sessions_max` x that in all), and as many
outstanding Listen leases per session.

A Listen lease: Langflow gives a component no "the run failed" hook, so a claimed message
whose run died would never be answered. Each claim therefore records a lease on the
message (deadline = claim time + `listen_lease_s`, attempt count + 1). Storing an `ai`
message in the session acknowledges (drops) every lease of that session; a lease whose
deadline passed is claimed again, before the backlog, until `listen_attempts_max` claims
were made, after which it is dropped and reported (`ListenClaim.dropped`). Deadlines are
wall-clock times read by the caller (`time.time()` unless a test passes `now`).
A consumer that runs each message itself (the runner) claims with `exclusive=True`, so that
a session has one claim in flight at a time, renews the lease while it works
(`renew_listen`) and, if the run fails, settles the message without an answer
(`ack_listen`).
Each backend passes the one contract suite in `tests/test_storage_contract.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from bridge.errors import InvalidInput, QuotaExceeded
from bridge.models import Draft, SessionInfo, StoredMessage, Template
from bridge.values import value

__all__ = [
    "Appended",
    "Claimed",
    "DroppedLease",
    "ListenClaim",
    "Storage",
    "check_page",
    "content_bytes",
    "sessions_quota",
]


def content_bytes(message: StoredMessage) -> int:
    """The size of `message` for `Storage.history`'s `max_bytes`: its content in UTF-8."""
    text = message.content
    return len(text) if text.isascii() else len(text.encode())


def check_page(offset: int, limit: int | None) -> None:
    """Refuse a negative `offset` or `limit` of `Storage.sessions`."""
    if offset < 0 or (limit is not None and limit < 0):
        raise InvalidInput(f"offset and limit must be 0 or more (got {offset}, {limit})")


def sessions_quota(held: int) -> QuotaExceeded:
    """The error of a session refused because the store already holds `held` sessions."""
    return QuotaExceeded(
        f"the bridge holds {held} sessions, its limit (BRIDGE_SESSIONS_MAX): delete "
        "sessions that are no longer needed, or raise the limit"
    )


@value
class Appended:
    """The outcome of `Storage.append`.

    `stored` lists what this call stored, in `seq` order: the welcome messages first when
    the call created the session, then the message itself. It is empty for a duplicate.
    `message` is the stored form of the draft, the first one when `duplicate` is true.
    """

    message: StoredMessage
    stored: tuple[StoredMessage, ...]
    duplicate: bool


@value
class Claimed:
    """A message `Storage.claim_listen` handed out, under a lease.

    `attempt` is 1 the first time the message is claimed and grows by one each time its
    lease ran out unanswered and it was claimed again (a release does not count).
    """

    message: StoredMessage
    attempt: int

    @property
    def session_id(self) -> str:
        """The session of the message (what `ListenBoard` wakes waiters by)."""
        return self.message.session_id


@value
class DroppedLease:
    """A claimed message given up unanswered: its lease ran out after the last allowed
    attempt, or its session already held `listen_backlog_per_session` newer leases."""

    session_id: str
    seq: int
    attempts: int


@value
class ListenClaim:
    """The outcome of `Storage.claim_listen`: what it claimed (None: nothing to hand out)
    and the leases it dropped on the way, each reported by exactly one claim."""

    claimed: Claimed | None
    dropped: tuple[DroppedLease, ...] = ()


class Storage(Protocol):
    """Durable state of the bridge. Every method may raise `StorageUnavailable`."""

    @property
    def epoch(self) -> str:
        """Names the lifetime of this history; it changes only if history was lost."""
        ...

    @property
    def url(self) -> str:
        """The store's URL with any password removed (for logs and /readyz)."""
        ...

    async def open(self) -> None:
        """Connect and create what is missing. Called once before any other method."""
        ...

    async def close(self) -> None:
        """Finish pending writes and release resources."""
        ...

    async def ping(self) -> None:
        """Return if the store answers, else raise `StorageUnavailable`."""
        ...

    async def create_session(
        self, session_id: str, seed: Sequence[Draft]
    ) -> tuple[StoredMessage, ...] | None:
        """Create the session with `seed` as its first messages; None if it existed.
        Raise `QuotaExceeded` (storing nothing) if the store already holds `sessions_max`
        sessions: checked and created in one atomic step, whatever the backend."""
        ...

    async def append(self, session_id: str, draft: Draft, seed: Sequence[Draft]) -> Appended:
        """Store `draft` as the session's next message, creating the session with `seed`
        first if it is new (and refusing like `create_session` when that would exceed
        `sessions_max`). A draft whose `key` was already stored for this session is a
        duplicate: nothing is stored and the first message is returned. A `user` message
        joins its session's Listen backlog, which keeps the newest
        `listen_backlog_per_session` unclaimed ones: a flood evicts only its own session's
        oldest. An `ai` message acknowledges every Listen lease of its session (they are
        dropped: those messages are answered), in the same atomic step. When this
        returns, the write is durable as far as the backend promises."""
        ...

    async def history(
        self,
        session_id: str,
        *,
        after: int = 0,
        before: int | None = None,
        last: int | None = None,
        max_bytes: int | None = None,
    ) -> list[StoredMessage]:
        """Messages with `after < seq < before`, oldest first; with `last`, only the
        newest `last` of them. An unknown session has none.

        With `max_bytes`, only the first of those messages (oldest first) whose sizes add
        up to at most `max_bytes`, and always the first one however large: a page read
        this way holds about `max_bytes` whatever its messages weigh, and the backend
        loads little beyond it (SQLite and memory one message; Redis's script a batch of
        16, inside Redis). A message's size is its content in UTF-8 bytes
        (`content_bytes`); Redis weighs it as stored instead (the content with JSON
        escapes, plus its other fields: never less, a few hundred bytes more at most for
        ASCII text). The page may end before `before`: read on with `after=` the last
        seq it returned."""
        ...

    async def last_message(self, session_id: str, role: str | None) -> StoredMessage | None:
        """The newest message of the session (of `role` if given)."""
        ...

    async def session_info(self, session_id: str) -> SessionInfo | None:
        """Counters of one session, None if unknown."""
        ...

    async def sessions(self, *, offset: int = 0, limit: int | None = None) -> list[str]:
        """Session ids in creation order: `limit` of them (all if None) after skipping
        the first `offset`. Raise `InvalidInput` if either is negative."""
        ...

    async def last_session(self) -> str | None:
        """The most recently created session id."""
        ...

    async def delete_session(self, session_id: str) -> bool:
        """Delete one session, its messages, keys, Listen backlog and leases; False if
        unknown."""
        ...

    async def reset(self) -> None:
        """Delete every session. The epoch stays: seqs of new sessions start at 1 again,
        and subscribers were told by a `reset` event."""
        ...

    async def load_template(self) -> Template | None:
        """The stored chat template, None if none was ever saved."""
        ...

    async def save_template(self, template: Template) -> None:
        """Store the chat template durably."""
        ...

    async def claim_listen(
        self, session_id: str | None, now: float | None = None, *, exclusive: bool = False
    ) -> ListenClaim:
        """Take one message for a Listen call (of one session, or of any), atomically, so
        that each claim of a message goes to exactly one call.

        First the leased message whose deadline passed by `now` (`time.time()` if None)
        longest ago, if its attempts are below `listen_attempts_max`: it is leased again
        (attempt + 1); one that used up its attempts is dropped and reported instead.
        Then the oldest `user` message no Listen call has taken yet. A claim leases its
        message until `now + listen_lease_s` unless leases are off (0); a session holding
        `listen_backlog_per_session` leases drops its oldest for the new one.

        `exclusive`: one claim in flight per session. A session holding a lease whose
        deadline is after `now` is busy and passed over whole: neither its run-out leases
        nor its backlog are handed out, and the claim takes the next message of a session
        that is not busy, in the same order (run-out leases longest ago first, then the
        backlog oldest first). Leases that used up their attempts are still dropped and
        reported, busy session or not. The check and the claim are one atomic step, so
        consumers in any number of processes that all claim exclusively run each
        session's messages one at a time, in order. The scan passes over the entries of
        busy sessions (Redis reads them in batches). With leases off there are no leases,
        so no session is ever busy: an exclusive claim is a plain one."""
        ...

    async def release_listen(self, claimed: Claimed) -> None:
        """Give back a message `claim_listen` returned but nobody received (its Listen
        call was cancelled): its lease is dropped without counting the attempt, and it
        goes to the front of the backlog, so that it is the next claimed, for its session
        and for any session. Nothing happens if the message is no longer in the session's
        history (trimmed, deleted, reset), is already back in the backlog, or was claimed
        again since (its lease is on a later attempt). A release never evicts another
        message."""
        ...

    async def ack_listen(self, claimed: Claimed) -> None:
        """Settle a claimed message answered without an `ai` message (its run failed and
        the error was shown): its lease is dropped, and it neither returns to the backlog
        nor is handed out again. Other leases of its session stay (an `ai` message drops
        them all). Nothing happens if the lease is gone (acknowledged, dropped, its session
        deleted or reset), was claimed again since (its lease is on a later attempt), or
        its seq now holds another message (a session deleted and made anew)."""
        ...

    async def renew_listen(self, claimed: Claimed, now: float | None = None) -> bool:
        """Extend the lease of a claimed message still being worked on: if its lease is
        still held at this attempt, its deadline becomes `now + listen_lease_s` (`now` is
        `time.time()` if None) and this returns True, even if the deadline had passed, as
        long as no claim took the message again. False, changing nothing, if the lease is
        gone (acknowledged, dropped, session deleted or reset), on a later attempt, or of
        another message (see `ack_listen`); always False with leases off."""
        ...

    async def token_secret(self) -> bytes:
        """A random 32-byte secret for signing session tokens, made on the first call and
        kept by the store: the same on every call, after a reopen (durable backends) and
        on every instance sharing the store. `reset` keeps it."""
        ...
