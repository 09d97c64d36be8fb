"""The servers under test, each in its own process on a free 127.0.0.1 port.

A `ServerSpec` says what to start (the reference hub, or the bridge with a store URL); a
`Server` is one running process: started, polled on `/healthz` until ready, measured with
psutil (RSS, CPU time), and stopped with SIGTERM then, if need be, SIGKILL.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import httpx
import psutil

from tests.support import stop_process

__all__ = ["BRIDGE", "BRIDGE_SQLITE", "REFERENCE", "Server", "ServerSpec", "bridge_available"]

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class ServerSpec:
    """What to start: `kind` is "reference" or "bridge"; `store` a bridge store URL or a
    scheme ("sqlite" means a fresh file in a temporary folder)."""

    key: str
    label: str
    kind: str
    store: str = "memory://"


REFERENCE = ServerSpec("reference", "reference", "reference")
BRIDGE = ServerSpec("bridge", "bridge memory", "bridge", "memory://")
BRIDGE_SQLITE = ServerSpec("bridge_sqlite", "bridge sqlite", "bridge", "sqlite")


def bridge_available() -> bool:
    """True once `python -m bridge` can exist (the lead is writing it)."""
    return (ROOT / "bridge" / "__main__.py").exists()


def _server_env() -> dict[str, str]:
    """Our environment minus `BRIDGE_*`: the bridge is measured with its defaults, except
    the per-client socket cap: every load-generator socket comes from 127.0.0.1."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    env["BRIDGE_SOCKETS_PER_CLIENT_MAX"] = "1000000"
    env["BRIDGE_SOCKETS_MAX"] = "1000000"
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """One server process; use as a context manager so it is always stopped."""

    def __init__(self, spec: ServerSpec, log_dir: Path, start_timeout: float = 60.0) -> None:
        self.spec = spec
        self.port = _free_port()
        self._log_dir = log_dir
        self._start_timeout = start_timeout
        self._tmp: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._ps: psutil.Process | None = None
        self.log_path = log_dir / f"{spec.key}-{self.port}.log"

    def _command(self) -> list[str]:
        if self.spec.kind == "reference":
            return [sys.executable, "-m", "bench.reference_hub", "--port", str(self.port)]
        store = self.spec.store
        if store == "sqlite":
            self._tmp = Path(tempfile.mkdtemp(prefix="bench-sqlite-"))
            store = f"sqlite:///{self._tmp / 'bridge.db'}"  # absolute path: four slashes
        return [
            sys.executable, "-m", "bridge", "serve",
            "--host", "127.0.0.1", "--port", str(self.port), "--store", store,
        ]

    def __enter__(self) -> Server:
        cmd = self._command()
        self._log_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                cmd, cwd=ROOT, env=_server_env(), stdout=log, stderr=subprocess.STDOUT
            )
        self._ps = psutil.Process(self._proc.pid)
        deadline = time.monotonic() + self._start_timeout
        with httpx.Client(timeout=1.0) as client:
            while time.monotonic() < deadline:
                if self._proc.poll() is not None:
                    tail = self.log_path.read_text(errors="replace")[-2000:]
                    self.stop()
                    raise RuntimeError(f"{self.spec.label} exited at start:\n{tail}")
                try:
                    if client.get(f"{self.url}/healthz").status_code == 200:
                        return self
                except httpx.HTTPError:
                    pass
                time.sleep(0.05)  # poll interval while the server imports and binds
        self.stop()
        raise TimeoutError(f"{self.spec.label} not healthy within {self._start_timeout}s")

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Base HTTP URL."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        """Process id (for profilers)."""
        return int(self._process().pid)

    def _process(self) -> psutil.Process:
        if self._ps is None:
            raise RuntimeError(f"{self.spec.label} is not started")
        return self._ps

    def alive(self) -> bool:
        """True while the process runs."""
        return self._proc is not None and self._proc.poll() is None

    def rss(self) -> int:
        """Resident set size in bytes, of the server process only (uvicorn runs one)."""
        return int(self._process().memory_info().rss)

    def cpu_seconds(self) -> float:
        """User + system CPU time used so far."""
        t = self._process().cpu_times()
        return float(t.user + t.system)

    def stop(self) -> None:
        """SIGTERM, wait up to 10 s, then SIGKILL; remove the temporary store."""
        stop_process(self._proc)
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
