"""The bridge served inside the test process: the same server `streamlit-bridge serve`
runs (`bridge.server.build_server`: uvicorn, uvloop, the bridge's WebSocket protocol and
shutdown order), on a socket of its own, in a thread with its own event loop.

For tests that need a real server but not a process of its own: starting one costs a few
milliseconds instead of the second or two of a `python -m bridge serve` (imports, then
polling /healthz). Keep real processes where the process is the point: kill -9, SIGTERM,
restarts, memory and file descriptors of the server, nginx, Redis clusters.
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass, field

from bridge.server import BridgeServer, build_server
from bridge.settings import Settings
from tests.support import OnLoopback, wait_until


@dataclass
class InProcessBridge(OnLoopback):
    """A bridge server running in a thread of this process; `url` and `ws_url` as
    `RunningBridge` has them."""

    store: str
    env: dict[str, str] = field(default_factory=dict)
    port: int = 0
    server: BridgeServer | None = None
    _thread: threading.Thread | None = None
    _sock: socket.socket | None = None

    def start(self, timeout: float = 20.0) -> InProcessBridge:
        """Bind a free port, serve on it in a new thread, return once the app started."""
        sock = self._sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = int(sock.getsockname()[1])
        env = {"BRIDGE_LOG_LEVEL": "warning", **self.env}
        settings = Settings.load(env, host="127.0.0.1", port=self.port, store=self.store)
        server = self.server = build_server(settings)
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name=f"bridge-{self.port}"
        )
        self._thread.start()
        wait_until(
            lambda: server.started or not self._alive(),
            timeout,
            f"the in-process bridge on port {self.port} to start",
        )
        if not server.started:
            raise RuntimeError(f"the in-process bridge on port {self.port} did not start")
        return self

    def _alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float = 20.0) -> None:
        """Shut down as SIGTERM would (sockets closed with 1001, storage closed)."""
        if self.server is not None and self._thread is not None:
            self.server.should_exit = True
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise RuntimeError(f"the in-process bridge on port {self.port} did not stop")
        if self._sock is not None:
            self._sock.close()  # the event loop may have used a duplicate of it
