"""`send`, `tail` and `listen`: terminal clients, built on the one protocol client
(`streamlit_client.BridgeClient` and its `Subscription`).

Output: the bridge's JSON on stdout (`send`, `listen`) or one line per message (`tail`);
notes and errors on stderr. Exit codes: 0 done, 1 the bridge refused or could not be
reached (the reason on stderr), 3 `listen` got no message within its timeout.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from streamlit_client.client import BridgeClient, BridgeHTTPError
from streamlit_client.subscription import SubscriptionClosed

__all__ = ["listen", "send", "tail"]


class _Failed(Exception):
    """A command failed; the message says why, for the terminal."""


@contextmanager
def _reporting() -> Iterator[None]:
    """Turn the client's errors into one line for the terminal."""
    try:
        yield
    except BridgeHTTPError as exc:
        raise _Failed(str(exc)) from None
    except httpx.ConnectError as exc:
        raise _Failed(f"cannot reach the bridge: {exc}") from None
    except httpx.HTTPError as exc:
        raise _Failed(f"request failed: {exc!r}") from None
    except SubscriptionClosed as exc:
        raise _Failed(f"bridge closed the connection ({exc.code} {exc.reason})") from None


def _run(url: str, api_key: str | None, command: Callable[[BridgeClient], int]) -> int:
    try:
        with BridgeClient(url, api_key=api_key) as client, _reporting():
            return command(client)
    except _Failed as exc:
        print(f"streamlit-bridge: {exc}", file=sys.stderr)
        return 1


def _print_json(data: dict[str, Any]) -> None:
    print(json.dumps(data, ensure_ascii=False))


def send(url: str, api_key: str | None, session: str, text: str, role: str) -> int:
    """POST one message; print the stored message."""

    def go(client: BridgeClient) -> int:
        _print_json(client.post_message(session, role, text).to_dict())
        return 0

    return _run(url, api_key, go)


def listen(url: str, api_key: str | None, timeout: float, session: str | None) -> int:
    """Wait for one user message; print it (exit 0) or say none came (exit 3)."""

    def go(client: BridgeClient) -> int:
        listened = client.listen(timeout, session_id=session)
        if listened is None:
            print(f"no user message within {timeout:g} s", file=sys.stderr)
            return 3
        _print_json(listened.to_dict())
        return 0

    return _run(url, api_key, go)


def tail(url: str, api_key: str | None, session: str, after: int) -> int:
    """Print the session's messages as they arrive. The subscription comes back after
    whatever the close-code table says to come back from (a restart, a drop for being
    slow, an expired token) and stops where it says stop. Ctrl-C stops."""
    notes = logging.StreamHandler(sys.stderr)
    notes.setFormatter(logging.Formatter("-- %(message)s"))
    reconnects = logging.getLogger("streamlit_client.subscription")
    reconnects.addHandler(notes)
    reconnects.setLevel(logging.INFO)

    def go(client: BridgeClient) -> int:
        for event in client.subscribe(session, after=after):
            _print_event(event)
        return 0

    try:
        return _run(url, api_key, go)
    finally:
        reconnects.removeHandler(notes)


def _print_event(event: dict[str, Any]) -> None:
    kind = event.get("event")
    if kind == "hello":
        print(
            f"-- session {event['session_id']} (last seq {event['last_seq']}, "
            f"{event['subscribers']} subscriber(s))",
            file=sys.stderr,
        )
    elif kind == "message":
        m = event["message"]
        print(f"[{m['seq']}] {m['role']}: {m['content']}", flush=True)
    elif kind == "stream.start":
        print(f"[..] {event['role']}: ", end="", flush=True)
    elif kind == "stream.delta":
        print(event["delta"], end="", flush=True)
    elif kind == "stream.end":
        print(flush=True)
    elif kind == "stream.abort":
        print(f"  [aborted: {event.get('detail', '')}]", flush=True)
    elif kind == "reset":
        print("-- history reset", file=sys.stderr)
