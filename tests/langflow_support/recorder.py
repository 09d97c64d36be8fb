"""A stand-in HTTP server that records requests and answers with scripted responses.

Used where a test needs to see the raw request a component sends (path encoding, headers) or
needs a peer the project does not provide (Langflow's webhook for Send's Rerun Flow).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Recorded:
    """One request as the server saw it."""

    method: str
    path: str  # raw request target, still percent-encoded
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Reply:
    """What the server answers: status, JSON body (None: empty) and an optional delay."""

    status: int = 200
    body: Any = None
    delay: float = 0.0


@dataclass
class Recorder:
    """The running server: its URL and the requests received so far."""

    url: str
    requests: list[Recorded] = field(default_factory=list)


@contextmanager
def recording_server(answer: Callable[[Recorded], Reply]) -> Iterator[Recorder]:
    """Run a recorder on a free loopback port for the duration of the `with` block."""
    recorder_box: list[Recorder] = []

    class Handler(BaseHTTPRequestHandler):
        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            seen = Recorded(
                self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body
            )
            recorder_box[0].requests.append(seen)
            reply = answer(seen)
            if reply.delay:
                time.sleep(reply.delay)  # wait-ok: the scripted slow peer, not test synchronisation
            payload = b"" if reply.body is None else json.dumps(reply.body).encode()
            self.send_response(reply.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_PUT = do_DELETE = _handle

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep test output clean

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    recorder_box.append(Recorder(url=f"http://127.0.0.1:{server.server_address[1]}"))
    # A short poll interval: shutdown() waits for the next poll, once per test.
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield recorder_box[0]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
