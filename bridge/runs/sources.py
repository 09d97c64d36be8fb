"""Where a run goes: a Langflow flow (`/api/v2/workflows`) or any AG-UI endpoint.

A source builds the HTTP request of one run; both answer with AG-UI events over SSE,
which `runner` reads. The API key and agent headers go into requests only: no log line
and no error text carries them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Protocol

from bridge.models import StoredMessage
from bridge.settings import Settings

__all__ = ["AguiAgent", "LangflowFlow", "RunRequest", "RunSource", "source_for"]


@dataclass(frozen=True, slots=True)
class RunRequest:
    """One run's HTTP request: POST `json` to `url` with `headers`."""

    url: str
    json: dict[str, Any]
    headers: dict[str, str] = field(repr=False)


class RunSource(Protocol):
    """What answers the chat."""

    @property
    def where(self) -> str:
        """The peer in plain words, for errors: `Langflow at http://…`."""
        ...

    @property
    def who(self) -> str:
        """What runs, in plain words: `the flow`, `the agent`."""
        ...

    @property
    def needs_history(self) -> bool:
        """True if each run is given the session's earlier messages."""
        ...

    def request(
        self, message: StoredMessage, history: list[StoredMessage], run_id: str
    ) -> RunRequest:
        """The request that runs `message` (after `history`, oldest first) as `run_id`."""
        ...


@dataclass(frozen=True, slots=True)
class LangflowFlow:
    """A flow on a Langflow server or `lfx serve`: the flow keeps its own memory by
    `session_id` (the bridge session), so it is sent only the new message."""

    url: str
    flow: str
    api_key: str | None = field(default=None, repr=False)

    @property
    def where(self) -> str:
        return f"Langflow at {self.url}"

    @property
    def who(self) -> str:
        return "the flow"

    @property
    def needs_history(self) -> bool:
        return False

    def request(
        self, message: StoredMessage, history: list[StoredMessage], run_id: str
    ) -> RunRequest:
        headers = {"accept": "text/event-stream"}
        if self.api_key:
            headers["x-api-key"] = self.api_key
        return RunRequest(
            f"{self.url.rstrip('/')}/api/v2/workflows",
            {
                "flow_id": self.flow,
                "input_value": message.content,
                "session_id": message.session_id,
                "mode": "stream",
                "stream_protocol": "agui",
            },
            headers,
        )


@dataclass(frozen=True, slots=True)
class AguiAgent:
    """An AG-UI HTTP endpoint: each run gets the standard run input, with the session as
    its thread and the session's messages (the welcome too) as its conversation."""

    url: str
    headers: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def where(self) -> str:
        return f"the agent at {self.url}"

    @property
    def who(self) -> str:
        return "the agent"

    @property
    def needs_history(self) -> bool:
        return True

    def request(
        self, message: StoredMessage, history: list[StoredMessage], run_id: str
    ) -> RunRequest:
        messages = [_agui_message(m) for m in (*history, message) if m.content]
        return RunRequest(
            self.url,
            {
                "threadId": message.session_id,
                "runId": run_id,
                "state": {},
                "messages": messages,
                "tools": [],
                "context": [],
                "forwardedProps": {},
            },
            {"accept": "text/event-stream", **self.headers},
        )


def _agui_message(message: StoredMessage) -> dict[str, Any]:
    role = "user" if message.role == "user" else "assistant"
    return {"id": message.id or f"seq-{message.seq}", "role": role, "content": message.content}


def source_for(settings: Settings) -> RunSource | None:
    """The source `settings` name (`langflow_url` + `flow`, or `agent_url`), if any."""
    if settings.langflow_url and settings.flow:
        return LangflowFlow(settings.langflow_url, settings.flow, settings.langflow_api_key)
    if settings.agent_url:
        headers = {}
        for header in settings.agent_header:
            name, _, value = header.partition(":")
            headers[name.strip()] = value.strip()
        return AguiAgent(settings.agent_url, headers)
    return None


def error_text(body: bytes) -> str:
    """The error message of an HTTP error body: FastAPI's `detail`, Langflow's `message`
    or `error`, else the body's first line."""
    text = body.decode("utf-8", "replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        return text.splitlines()[0][:300] if text else ""
    if isinstance(data, dict):
        for name in ("message", "detail", "error"):
            value = data.get(name)
            if isinstance(value, str) and value.strip():
                return value.strip()[:300]
            if isinstance(value, list):  # FastAPI's validation errors: their messages
                msgs = [str(v.get("msg")) for v in value if isinstance(v, dict) and v.get("msg")]
                return ("; ".join(msgs) or json.dumps(value))[:300]
            if isinstance(value, dict):
                inner = value.get("message") or value.get("error")
                return (str(inner) if inner else json.dumps(value))[:300]
    return text[:300]
