"""What a run's AG-UI events mean for the chat: text of the reply, a step to show, the end.

AG-UI (https://docs.ag-ui.com) is the event vocabulary Langflow's `/api/v2/workflows`
speaks with `stream_protocol: "agui"`, as do LangGraph, CrewAI, Pydantic AI and other agent
servers. Each event is a JSON object with a `type`; this module reads the ones a chat
needs and ignores the rest (state snapshots, raw and custom events), so a newer server
with more event types keeps working.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

__all__ = ["Progress", "RunFailed", "Step"]


class RunFailed(Exception):
    """A run ended without a reply; `detail` says why in plain words, for the tabs."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Step:
    """What the run does now, in plain words (`Calling search…`); "" when nothing."""

    label: str


# A text message from another role (the user's own input echoed back) is not the reply.
_REPLY_ROLES = frozenset({"assistant", "ai", ""})
_MAX_NAME = 80


class Progress:
    """Reads one run's AG-UI events in order (`feed`), keeping what it needs: which text
    messages belong to the reply, and whether the run finished.

    The reply is the text of every assistant text message of the run, in order, messages
    separated by a blank line. `who` names the peer in errors ("the flow", "the agent")."""

    __slots__ = ("_gap", "_ignored", "_messages", "_text_seen", "finished", "who")

    def __init__(self, who: str) -> None:
        self.who = who
        self.finished = False
        self._messages: list[str] = []  # ids of reply messages, in order of their start
        self._ignored: set[str] = set()
        self._text_seen = False
        self._gap = False  # a new reply message began after some text: a blank line first

    def feed(self, data: str) -> str | Step | None:
        """One event's JSON text: the reply text it adds, a step to show, or None.
        Raise `RunFailed` for `RUN_ERROR` and for an event that is not AG-UI."""
        event = self._parse(data)
        kind = event["type"]
        if kind in ("TEXT_MESSAGE_START", "TEXT_MESSAGE_CONTENT", "TEXT_MESSAGE_CHUNK"):
            return self._text(kind, event)
        if kind == "TOOL_CALL_START":
            return Step(f"Calling {_name(event.get('toolCallName'), 'a tool')}…")
        if kind == "STEP_STARTED":
            return Step(f"Running {_name(event.get('stepName'), 'a step')}…")
        if kind in ("TOOL_CALL_END", "TOOL_CALL_RESULT", "STEP_FINISHED"):
            return Step("")
        if kind == "RUN_ERROR":
            message = event.get("message")
            reason = message.strip() if isinstance(message, str) and message.strip() else ""
            raise RunFailed(
                f"{self.who.capitalize()} failed: {reason[:2000]}"
                if reason
                else f"{self.who.capitalize()} failed without saying why"
            )
        if kind == "RUN_FINISHED":
            self.finished = True
        return None

    def _parse(self, data: str) -> dict[str, Any]:
        try:
            event = json.loads(data)
        except ValueError:
            event = None
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            raise RunFailed(
                f"{self.who.capitalize()} sent something that is not an AG-UI event: {data[:120]!r}"
            )
        return event

    def _text(self, kind: str, event: dict[str, Any]) -> str | None:
        message_id = str(event.get("messageId") or "")
        if message_id in self._ignored:
            return None
        if kind == "TEXT_MESSAGE_START" or message_id not in self._messages:
            role = event.get("role")
            if isinstance(role, str) and role.lower() not in _REPLY_ROLES:
                self._ignored.add(message_id)
                return None
            if message_id not in self._messages:
                self._messages.append(message_id)
                self._gap = self._text_seen  # a later message of the same reply
        delta = event.get("delta")
        if not isinstance(delta, str) or not delta:
            return None
        self._text_seen = True
        if self._gap:
            self._gap = False
            return "\n\n" + delta
        return delta


def _name(value: object, default: str) -> str:
    if not isinstance(value, str) or not value.strip():
        return default
    name = " ".join(value.split())
    return name if len(name) <= _MAX_NAME else name[: _MAX_NAME - 1] + "…"
