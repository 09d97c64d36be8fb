"""The one Python client of the bridge's protocol; never imports Streamlit.

```python
from streamlit_client.client import BridgeClient

with BridgeClient("http://127.0.0.1:7881") as bridge:
    bridge.post_message("s1", "ai", "Hello from Python")
    for event in bridge.subscribe("s1"):
        print(event)
```

Every client of this project speaks to the bridge through it: the `streamlit-bridge`
commands (`send`, `tail`, `listen`), the demo bot, the chat page's Python side. The shapes
it returns are the wire shapes of `bridge.wire` (`Message` is `StoredMessage`).

Errors: every non-2xx answer raises `BridgeHTTPError` (status and the bridge's `detail`);
network failures surface as `httpx.HTTPError`. `subscribe` is described in
`streamlit_client.subscription`; it yields every event as the bridge sends it, including
kinds this client has no use for (`presence`, `run.start`, `run.step`, `run.end`, and any a
newer bridge adds): consumers act on the kinds they know and skip the rest.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx

from bridge.wire import DEFAULT_BRIDGE_URL
from streamlit_client.models import Listened, Message, Template
from streamlit_client.subscription import Subscription

__all__ = ["DEFAULT_BRIDGE_URL", "BridgeClient", "BridgeHTTPError", "session_path", "ws_base"]

API = "/api/v1"


class BridgeHTTPError(Exception):
    """The bridge answered with a status outside 2xx."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"bridge answered {status}: {detail}")
        self.status = status
        self.detail = detail


def session_path(session_id: str) -> str:
    """`/api/v1/sessions/{id}` with the id URL-encoded (an id must never pick another route)."""
    return f"{API}/sessions/{quote(session_id, safe='')}"


def ws_base(http_url: str) -> str:
    """The WebSocket base URL for an HTTP base URL (`https` gives `wss`)."""
    url = http_url.rstrip("/")
    if url.startswith("https://"):
        return "wss://" + url[len("https://") :]
    if url.startswith("http://"):
        return "ws://" + url[len("http://") :]
    return url


class BridgeClient:
    """Synchronous client for one bridge; thread-safe, reuses connections.

    `api_key` is sent as `x-api-key` when given (bridges started with `BRIDGE_API_KEY`).
    `timeout` applies to ordinary calls; Listen and streaming set their own.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_BRIDGE_URL,
        *,
        api_key: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        headers = {"x-api-key": api_key} if api_key else {}
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    def __enter__(self) -> BridgeClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    # -- sessions and messages ------------------------------------------------------------

    def create_session(self, session_id: str) -> list[Message]:
        """Create `session_id` (seeded with the welcome message); returns its messages."""
        body = self._call("POST", session_path(session_id))
        return [Message.from_dict(m) for m in body or []]

    def session_info(self, session_id: str) -> dict[str, Any]:
        """`{session_id, created_at, last_seq, message_count, subscribers}`."""
        return dict(self._call("GET", session_path(session_id)) or {})

    def messages(self, session_id: str, limit: int = 0) -> list[Message]:
        """The last `limit` messages of a session, oldest first (0 = all)."""
        body = self._call("GET", f"{session_path(session_id)}/messages", params={"limit": limit})
        return [Message.from_dict(m) for m in body or []]

    def post_message(
        self,
        session_id: str,
        role: str,
        content: str,
        *,
        type: str = "text",
        id: str | None = None,
    ) -> Message:
        """Append a message (creates the session if new). A repeated `id` is not stored twice."""
        payload: dict[str, Any] = {"role": role, "content": content, "type": type}
        if id is not None:
            payload["id"] = id
        body = self._call("POST", f"{session_path(session_id)}/messages", json=payload)
        return Message.from_dict(body)

    def stream_reply(
        self,
        session_id: str,
        chunks: Iterable[str],
        *,
        role: str = "ai",
        timeout: float = 300.0,
    ) -> Message:
        """Stream a reply chunk by chunk; subscribers see it grow. Returns the stored message.

        Chunks go as NDJSON lines so a chunk boundary never splits a UTF-8 character.
        """

        def body() -> Iterator[bytes]:
            for chunk in chunks:
                if chunk:
                    yield (json.dumps({"delta": chunk}) + "\n").encode()

        answer = self._call(
            "POST",
            f"{session_path(session_id)}/messages/stream",
            params={"role": role},
            content=body(),
            headers={"content-type": "application/x-ndjson"},
            timeout=httpx.Timeout(10.0, read=timeout, write=timeout),
        )
        return Message.from_dict(answer)

    def stop(self, session_id: str) -> dict[str, Any]:
        """End whatever reply streams in `session_id` (`POST .../stop`), as the tab's Stop
        button does: the partial text is stored marked `stopped` and every tab gets its
        `stream.end`. Answers `{"session_id": ..., "stopping": true}`."""
        return dict(self._call("POST", f"{session_path(session_id)}/stop") or {})

    def delete_session(self, session_id: str) -> None:
        """Delete a session and its history; its subscribers get `reset`."""
        self._call("DELETE", session_path(session_id))

    def session_token(self, session_id: str) -> str:
        """A session token (JWT) for the WebSocket of one session; needs an API key."""
        body = self._call("POST", f"{session_path(session_id)}/token")
        return str(body["token"] if isinstance(body, dict) else body)

    def healthy(self) -> bool:
        """Whether the bridge answers `GET /healthz` (False if it cannot be reached)."""
        try:
            return self._http.get("/healthz", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    # -- template and Listen --------------------------------------------------------------

    def template(self) -> Template:
        """The current chat template."""
        return Template.from_dict(self._call("GET", f"{API}/chats"))

    def set_template(self, template: Template | None = None, **fields: Any) -> Template:
        """Replace the template (`POST /api/v1/chats`); open tabs apply it live.

        Pass a `Template`, or fields (`welcome_msg=..., input_msg=...`) over the current one.
        """
        if template is not None:
            base = template.to_dict()
        else:
            base = self.template().to_dict() if fields else Template().to_dict()
        body = {**base, **fields}
        answer = self._call("POST", f"{API}/chats", json=body)
        return Template.from_dict(answer if isinstance(answer, dict) else body)

    def listen(self, timeout: float = 30.0, *, session_id: str | None = None) -> Listened | None:
        """Wait up to `timeout` s for the next user message; None if none came.

        Any session's (`GET /api/v1/listen/message`), or only `session_id`'s.
        """
        path = (
            f"{API}/listen/message"
            if session_id is None
            else (f"{session_path(session_id)}/listen")
        )
        response = self._request(
            "GET",
            path,
            params={"timeout": timeout},
            timeout=httpx.Timeout(10.0, read=timeout + 10.0),
        )
        if response.status_code == 204:
            return None
        return Listened.from_dict(self._json(response))

    # -- WebSocket ------------------------------------------------------------------------

    def subscribe(
        self,
        session_id: str,
        *,
        after: int | None = None,
        token: str | None = None,
        reconnect: bool = True,
    ) -> Subscription:
        """A `Subscription` to one session's events; iterate it (see its docstring).

        With an API key and no `token`, tokens are minted as needed (again when one
        expires)."""
        source: str | Callable[[], str] | None = token
        if source is None and self.api_key:
            source = partial(self._mint_for_socket, session_id)
        return Subscription(
            ws_base(self.base_url),
            session_id,
            after=after,
            token=source,
            reconnect=reconnect,
        )

    def _mint_for_socket(self, session_id: str) -> str:
        """`session_token` for a `Subscription`: a bridge that cannot be reached or is
        busy raises `ConnectionError`, which the subscription retries like a failed
        connection; a refusal (4xx) ends it."""
        try:
            return self.session_token(session_id)
        except httpx.TransportError as exc:
            raise ConnectionError(f"cannot mint a session token: {exc}") from exc
        except BridgeHTTPError as exc:
            if exc.status >= 500 or exc.status == 429:
                raise ConnectionError(str(exc)) from exc
            raise

    # -- plumbing -------------------------------------------------------------------------

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return self._http.request(method, path, **kwargs)

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._request(method, path, **kwargs)
        if response.status_code == 204:
            return None
        return self._json(response)

    @staticmethod
    def _json(response: httpx.Response) -> Any:
        if not response.is_success:
            try:
                detail = response.json().get("detail", response.text)
            except (ValueError, AttributeError):
                detail = response.text
            raise BridgeHTTPError(response.status_code, str(detail))
        return response.json() if response.content else None
