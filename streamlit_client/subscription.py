"""Follow one session's WebSocket from Python, reconnecting with `after=<last seq>`.

What a close means is decided by the one table of `bridge.wire` (`after_close`), which the
page's `listener.js` follows too:
- stop (1007 invalid request, 1008 refused, 1009 frame too large, 4004 session deleted):
  the iteration ends with `SubscriptionClosed`;
- come back with a new token (1008 "session token expired"): when the token came from a
  callable (`BridgeClient.subscribe` does this with an API key) it is called again and the
  subscription resumes; a fixed token stops as above;
- come back (everything else, network errors included): reconnect with `after`, backing
  off while attempts fail; 1013 (busy) waits the longest backoff.

Frames: `message` and `stream.end` frames whose seq was already seen are dropped, so a
reconnect never yields a message twice; a `hello` with a new `epoch` means the bridge lost
the history: the subscription yields `{"event": "reset"}` and starts again from the first
message. Reconnects are logged (logger `streamlit_client.subscription`, level INFO).
"""

from __future__ import annotations

import json
import logging
import random
import threading
from collections.abc import Callable, Generator, Iterator
from typing import Any
from urllib.parse import quote, urlencode

from websockets.exceptions import ConnectionClosed, InvalidHandshake
from websockets.sync.client import ClientConnection, connect

from bridge.wire import BACKOFF_MAX_S, CLOSE_CODES, AfterClose, after_close, backoff_s

__all__ = ["Subscription", "SubscriptionClosed"]

log = logging.getLogger(__name__)


class SubscriptionClosed(Exception):
    """The bridge closed the socket for good (a close code whose rule is "stop")."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"subscription closed ({code}): {reason}")
        self.code = code
        self.reason = reason


class Subscription:
    """Iterate the events of one session as dicts (each has an `event` field).

    `after` starts after that seq (None: the whole history). `token` is a session token,
    or a callable that mints one (called again when one expires; it may raise `OSError`
    to mean "the bridge is unreachable, try again later"). With `reconnect=False` the
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
        max_backoff: float = BACKOFF_MAX_S,
        open_timeout: float = 10.0,
    ) -> None:
        self.ws_url = ws_url.rstrip("/")
        self.session_id = session_id
        self.last_seq = after
        self.epoch: str | None = None
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

    def close(self) -> None:
        """End the iteration and close the socket."""
        self._closed.set()
        if self._socket is not None:
            self._socket.close()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        failures = 0
        while not self._closed.is_set():
            code: int | None = None
            reason = ""
            restart = False
            try:
                with connect(
                    self.url(), open_timeout=self.open_timeout, compression=None
                ) as socket:
                    self._socket = socket
                    for raw in socket:
                        failures = 0
                        restart = yield from self._handle(json.loads(raw))
                        if restart:
                            break
                    else:
                        code, reason = socket.close_code, socket.close_reason or ""
            except ConnectionClosed as exc:
                # Closed by the bridge (`rcvd`), or by this side for a protocol breach
                # such as a frame over the size limit (`sent`, e.g. 1009).
                frame = exc.rcvd or exc.sent
                code, reason = (frame.code, frame.reason) if frame else (None, "")
            except (OSError, InvalidHandshake, TimeoutError) as exc:
                reason = str(exc)  # down, restarting or unreachable: come back
            finally:
                self._socket = None
            if self._closed.is_set():
                return
            if restart:
                continue
            code = 1006 if code is None else code  # no close frame: the connection dropped
            then = after_close(code, reason)
            if then is AfterClose.NEW_TOKEN and self._mint is not None:
                log.info("session %s: token expired; minting a new one", self.session_id)
                self.token = None  # minted again by the next url()
                continue
            if then in (AfterClose.STOP, AfterClose.NEW_TOKEN):
                raise SubscriptionClosed(code, reason or CLOSE_CODES[code].meaning)
            if not self.reconnect:
                return
            failures += 1
            delay = self._backoff(failures, busy=then is AfterClose.BACK_OFF)
            log.info(
                "session %s: disconnected (%s %s); reconnecting after seq %s in %.1f s",
                self.session_id, code, reason, self.last_seq, delay,
            )  # fmt: skip
            self._closed.wait(delay)

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

    def _backoff(self, failures: int, *, busy: bool) -> float:
        """Seconds before the next attempt (`bridge.wire.backoff_s`, jittered)."""
        return backoff_s(failures, busy=busy, max_s=self.max_backoff) * random.uniform(0.5, 1.0)
