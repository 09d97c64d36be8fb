"""What one tab knows of its session, and how a push from the browser changes it.

No Streamlit here: the page keeps one `ChatState` per tab in `st.session_state` and feeds
it the values the listener component sends (see `listener.js` for the other half).

The ack protocol: the component sends one value at a time,
`{"nonce", "messages": [...], "epoch", "resets", "template"}`, holding every message it
received that Python has not acknowledged yet. Python merges them (deduplicated by seq),
then answers with `have` (every seq up to it is known, without gaps) and `ack_nonce`. Only
then does the component send its next value. A gap-free `have` matters: a message posted
from this tab can be known before an older one pushed by another tab, and acknowledging
past the gap would make the browser drop the older one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from bridge.wire import WELCOME_ID
from streamlit_client.models import Message, Template

__all__ = ["ChatState", "Push"]


@dataclass(frozen=True, slots=True)
class Push:
    """What one value from the component changed."""

    new: tuple[Message, ...] = ()
    template_changed: bool = False
    reset: bool = False


@dataclass
class ChatState:
    """The messages, template and ack bookkeeping of one tab."""

    session_id: str
    template: Template = field(default_factory=Template)
    messages: dict[int, Message] = field(default_factory=dict)
    # Seqs up to `base` were never loaded (history fetched with a limit).
    base: int = 0
    epoch: str | None = None
    resets: int = 0
    ack_nonce: int | None = None
    # Messages with seq > live_from are drawn by the live fragment, older ones by the
    # full run; a full run moves the boundary up to `have`.
    live_from: int = 0
    # Pushed ai messages not drawn yet: they get the typing effect once.
    fresh: list[int] = field(default_factory=list)
    # Seqs that arrived as the end of a stream: the browser already showed them growing.
    streamed: set[int] = field(default_factory=set)
    needs_full_run: bool = False
    # The bridge closed the tab's socket because its token expired: mint a new one.
    token_expired: bool = False
    # The seq of the session's welcome message (the bridge gives it the id `welcome`),
    # if it is loaded: it is drawn with the welcome text of the template in force.
    welcome_seq: int | None = None
    _have: int = 0

    @property
    def have(self) -> int:
        """The highest seq such that every seq from `base + 1` up to it is known."""
        return self._have

    def load(self, messages: Iterable[Message]) -> None:
        """Replace everything with history fetched over HTTP."""
        ordered = sorted(messages, key=lambda m: m.seq)
        self.messages = {m.seq: m for m in ordered}
        self.welcome_seq = next((m.seq for m in ordered if m.id == WELCOME_ID), None)
        self.base = ordered[0].seq - 1 if ordered else 0
        self._have = self.base
        self.fresh.clear()
        self.streamed.clear()
        self._advance()
        self.live_from = self._have

    def add(self, message: Message) -> bool:
        """Add one message; False if its seq was known already."""
        if message.seq <= self.base or message.seq in self.messages:
            return False
        self.messages[message.seq] = message
        if message.id == WELCOME_ID:
            self.welcome_seq = message.seq
        self._advance()
        return True

    def apply_push(self, value: Any) -> Push:
        """Merge a value sent by the listener component; repeated nonces change nothing."""
        if not isinstance(value, dict) or value.get("nonce") == self.ack_nonce:
            return Push()
        self.ack_nonce = value.get("nonce")
        self.epoch = value.get("epoch") or self.epoch
        if value.get("token_expired"):
            # Only a full run mints tokens (the live fragment keeps its arguments).
            self.token_expired = self.needs_full_run = True
        reset = int(value.get("resets") or 0) > self.resets
        if reset:
            # The bridge lost or deleted the history: the component resends from seq 1.
            self.resets = int(value["resets"])
            self.load(())
            self.needs_full_run = True
        template_changed = False
        if isinstance(value.get("template"), dict):
            template = Template.from_dict(value["template"])
            if template != self.template:
                self.template, template_changed = template, True
                self.needs_full_run = True
        new = []
        for raw in value.get("messages") or ():
            message = Message.from_dict(raw)
            if self.add(message):
                new.append(message)
                if raw.get("streamed"):
                    self.streamed.add(message.seq)
                elif message.role == "ai":
                    self.fresh.append(message.seq)
        return Push(tuple(new), template_changed, reset)

    def start_full_run(self) -> None:
        """Called by each full run: everything known so far is drawn as history.

        Except messages still to be typed out: they stay in the live part, which types.
        """
        self.live_from = min([self._have, *(seq - 1 for seq in self.fresh)])
        self.needs_full_run = False

    def wants_full_run(self, max_live: int) -> bool:
        """Whether the live part should hand over to a full run (template, reset, or more
        than `max_live` live messages, unless some are waiting to be typed out: a full run
        would keep those live anyway)."""
        return self.needs_full_run or (len(self.live()) > max_live and not self.fresh)

    def take_fresh(self) -> set[int]:
        """Seqs to type out in this run (each only once, even if the run is interrupted)."""
        fresh, self.fresh = set(self.fresh), []
        return fresh

    def history(self) -> list[Message]:
        """Messages drawn by the full run, oldest first."""
        return [self.messages[s] for s in sorted(self.messages) if s <= self.live_from]

    def live(self) -> list[Message]:
        """Messages drawn by the live fragment, oldest first."""
        return [self.messages[s] for s in sorted(self.messages) if s > self.live_from]

    def _advance(self) -> None:
        while self._have + 1 in self.messages:
            self._have += 1
