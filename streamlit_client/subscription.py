"""Follow one session's WebSocket from Python, reconnecting with `after=<last seq>`.

The same rules the page's JavaScript follows (protocol.md, close codes):
- `message` and `stream.end` frames whose seq was already seen are dropped, so a
  reconnect never yields a message twice;
- a `hello` with a new `epoch` means the bridge lost the history: the subscription
  yields `{"event": "reset"}` and starts again from the first message;
- close code 1008 "session token expired" mints a new token and reconnects when the
  token came from a callable (`BridgeClient.subscribe` does this with an API key);
- close codes 1008 (policy) and 4004 (session deleted) end the iteration with
  `SubscriptionClosed`; every other close or network error reconnects with backoff.
"""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Callable, Generator, Iterator
from typing import Any
from urllib.parse import quote, urlencode

from websockets.exceptions import ConnectionClosed, InvalidHandshake
from websockets.sync.client import ClientConnection, connect

__all__ = ["FINAL_CLOSE_CODES", "Subscription", "SubscriptionClosed"]

# Close codes after which reconnecting cannot help (protocol.md section 6).
POLICY = 1008
FINAL_CLOSE_CODES = {1008: "refused by the bridge (origin or token)", 4004: "session deleted"}
OVERLOADED = 1013


class SubscriptionClosed(Exception):
    """The bridge closed the socket for good (`code` 1008 or 4004)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"subscription closed ({code}): {reason}")
        self.code = code
        self.reason = reason


class Subscription:
    """Iterate the events of one session as dicts (each has an `event` field).

    `after` starts after that seq (None: the whole history). With `reconnect=False` the
    iteration ends at the first close instead of reconnecting. `close()` may be called
    from another thread; the iteration then ends.
    """

    def __init__(
        self,
        ws_url: str,
        session_id: str,
        *,
        after: int | None = None,
        token: str | Callable[[], str] | None = None,
        reconnect: bool = True,
        max_backoff: float = 5.0,
        open_timeout: float = 10.0,
    ) -> None:
        self.ws_url = ws_url.rstrip("/")
        self.session_id = session_id
        self.last_seq = after
        self.epoch: str | None = None
        # A callable mints a fresh token, so that a socket the bridge closes when its
        # token expires (1008 "session token expired") comes back instead of stopping.
        self._mint = token if callable(token) else None
        self.token = None if callable(token) else token
        self.reconnect = reconnect
        self.max_backoff = max_backoff
        self.open_timeout = open_timeout
        self._closed = threading.Event()
        self._socket: ClientConnection | None = None

    def url(self) -> str:
        """The URL of the next connection attempt (minting a token first if needed)."""
        if self._mint is not None and self.token is None:
            self.token = self._mint()
        query: dict[str, str] = {}
        if self.last_seq is not None:
            query["after"] = str(self.last_seq)
        if self.token:
            query["token"] = self.token
        path = f"/api/v1/sessions/{quote(self.session_id, safe='')}/ws"
        return self.ws_url + path + ("?" + urlencode(query) if query else "")

    def send_message(self, role: str, content: str, **fields: Any) -> None:
        """Publish over the open socket (stored like a POST, pushed to every tab)."""
        if self._socket is None:
            raise RuntimeError("not connected")
        self._socket.send(
            json.dumps({"event": "message", "role": role, "content": content, **fields})
        )

    def close(self) -> None:
        """End the iteration and close the socket."""
        self._closed.set()
        if self._socket is not None:
            self._socket.close()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        failures = 0
        while not self._closed.is_set():
            code = None
            reason = ""
            restart = False
            try:
                with connect(self.url(), open_timeout=self.open_timeout) as socket:
                    self._socket = socket
                    for raw in socket:
                        frame = json.loads(raw)
                        failures = 0
                        restart = yield from self._handle(frame)
                        if restart:
                            break
                    else:
                        code = socket.close_code
                        reason = socket.close_reason or ""
            except ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd else None
                reason = exc.rcvd.reason if exc.rcvd else ""
            except (OSError, InvalidHandshake, TimeoutError):
                pass  # the bridge is down or restarting: back off and try again
            finally:
                self._socket = None
            if self._closed.is_set():
                return
            if code == POLICY and "expired" in reason and self._mint is not None:
                self.token = None  # minted again by the next url()
                continue
            if code in FINAL_CLOSE_CODES:
                raise SubscriptionClosed(code, reason or FINAL_CLOSE_CODES[code])
            if restart:
                continue
            if not self.reconnect:
                return
            failures += 1
            self._closed.wait(self._backoff(failures, overloaded=code == OVERLOADED))

    def _handle(self, frame: dict[str, Any]) -> Generator[dict[str, Any], None, bool]:
        """Yield what the caller should see of `frame`; return True to reconnect at once."""
        kind = frame.get("event")
        if kind == "hello":
            epoch = frame.get("epoch")
            if self.epoch is not None and epoch != self.epoch and self.last_seq:
                # The history this `after` referred to is gone: start again from seq 1.
                self.epoch, self.last_seq = epoch, None
                yield {"event": "reset", "reason": "epoch"}
                return True
            self.epoch = epoch
        elif kind in ("message", "stream.end"):
            seq = int(frame.get("seq") or 0)
            if self.last_seq is not None and seq <= self.last_seq:
                return False
            self.last_seq = seq
        elif kind == "reset":
            # The session was deleted: what follows is a new history with a new epoch.
            self.last_seq, self.epoch = None, None
        yield frame
        return False

    def _backoff(self, failures: int, *, overloaded: bool) -> float:
        base = 0.1 * float(2 ** min(failures, 8)) * (4 if overloaded else 1)
        return min(self.max_backoff, base) * random.uniform(0.5, 1.0)
