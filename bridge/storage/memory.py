"""`memory://`: everything in this process; gone when it exits (a new epoch tells clients)."""

from __future__ import annotations

import time
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from bridge.models import Draft, SessionInfo, StoredMessage, Template
from bridge.storage.base import Appended

__all__ = ["MemoryStorage"]


@dataclass(slots=True)
class _Session:
    created_at: float
    messages: list[StoredMessage] = field(default_factory=list)
    last_seq: int = 0
    keys: dict[str, StoredMessage] | None = None  # made on the first idempotency key

    def add(self, session_id: str, draft: Draft) -> StoredMessage:
        self.last_seq += 1
        message = StoredMessage.from_draft(session_id, self.last_seq, draft)
        self.messages.append(message)
        if draft.key:
            if self.keys is None:
                self.keys = {}
            self.keys[draft.key] = message
        return message

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

    def __init__(self, *, history_limit: int = 10_000, listen_backlog: int = 10_000) -> None:
        self._epoch = uuid.uuid4().hex
        self._sessions: dict[str, _Session] = {}  # insertion order is creation order
        self._template: Template | None = None
        self._history_limit = history_limit
        self._listen: deque[StoredMessage] = deque(maxlen=listen_backlog)

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
        session = _Session(created_at=time.time())
        self._sessions[session_id] = session
        return session, [self._add(session_id, session, d) for d in seed]

    def _add(self, session_id: str, session: _Session, draft: Draft) -> StoredMessage:
        message = session.add(session_id, draft)
        if message.role == "user":
            self._listen.append(message)
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

    async def sessions(self) -> list[str]:
        return list(self._sessions)

    async def last_session(self) -> str | None:
        return next(reversed(self._sessions), None)

    async def delete_session(self, session_id: str) -> bool:
        if self._sessions.pop(session_id, None) is None:
            return False
        self._listen = deque(
            (m for m in self._listen if m.session_id != session_id), maxlen=self._listen.maxlen
        )
        return True

    async def reset(self) -> None:
        self._sessions.clear()
        self._listen.clear()

    async def load_template(self) -> Template | None:
        return self._template

    async def save_template(self, template: Template) -> None:
        self._template = template

    async def claim_listen(self, session_id: str | None) -> StoredMessage | None:
        for i, message in enumerate(self._listen):
            if session_id is None or message.session_id == session_id:
                del self._listen[i]
                return message
        return None
