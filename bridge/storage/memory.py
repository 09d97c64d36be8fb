"""`memory://`: everything in this process; gone when it exits (a new epoch tells clients)."""

from __future__ import annotations

import itertools
import secrets
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from bridge.models import Draft, SessionInfo, StoredMessage, Template
from bridge.storage.base import Appended, check_page, sessions_quota

__all__ = ["MemoryStorage"]


@dataclass(slots=True)
class _Session:
    created_at: float
    messages: list[StoredMessage] = field(default_factory=list)
    last_seq: int = 0
    keys: dict[str, StoredMessage] | None = None  # made on the first idempotency key
    listen: deque[int] = field(default_factory=deque)  # seqs of its backlog, oldest first

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
                del self._listen[(session_id, session.listen.popleft())]
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
    ) -> list[StoredMessage]:
        session = self._sessions.get(session_id)
        if session is None or not session.messages:
            return []
        first = session.messages[0].seq
        start = max(0, after + 1 - first)
        stop = len(session.messages) if before is None else max(0, before - first)
        if last is not None:
            start = max(start, stop - last)
        return session.messages[start:stop]

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
        return True

    async def reset(self) -> None:
        self._sessions.clear()
        self._listen.clear()

    async def load_template(self) -> Template | None:
        return self._template

    async def save_template(self, template: Template) -> None:
        self._template = template

    async def claim_listen(self, session_id: str | None) -> StoredMessage | None:
        while True:
            if session_id is None:
                if not self._listen:
                    return None
                (owner, seq), message = self._listen.popitem(last=False)
                session = self._sessions[owner]
                session.listen.popleft()  # the same entry: both are in claim order
            else:
                session_or_none = self._sessions.get(session_id)
                if session_or_none is None or not session_or_none.listen:
                    return None
                session = session_or_none
                seq = session.listen.popleft()
                message = self._listen.pop((session_id, seq))
            # A message trimmed from history since is gone for Listen too.
            if session.kept(seq) is message:
                return message

    async def release_listen(self, message: StoredMessage) -> None:
        session = self._sessions.get(message.session_id)
        entry = (message.session_id, message.seq)
        if session is None or entry in self._listen:
            return
        kept = session.kept(message.seq)
        if kept is None or kept.id != message.id:  # trimmed, or a later session's message
            return
        self._listen[entry] = kept
        self._listen.move_to_end(entry, last=False)
        session.listen.appendleft(message.seq)

    async def token_secret(self) -> bytes:
        # This process only: tokens signed with it die with the process, like the history.
        if self._token_secret is None:
            self._token_secret = secrets.token_bytes(32)
        return self._token_secret
