"""A real `lfx serve` for tests: the flows in tests/flows/ served on a free 127.0.0.1 port.

Fixtures (a module using them adds `pytest_plugins = ["tests.lfx_support"]`):

- `lfx_server` (session): one server for the whole session, shared by every test that asks.
  Tests using it carry `LFX_GROUP` so that under `--dist loadgroup` they run on one worker
  (and so start one server).
- `start_lfx` (function): `start_lfx(token_delay=None)` starts a server of the test's own,
  stopped when the test ends, for tests that stop or kill it ("lfx goes down").

Outside pytest (a benchmark, another fixture): `with lfx_serving() as lfx: ...`.

Each server is a `RunningLfx`: `url`, `api_key`, `flow_ids` (file stem -> flow id, e.g.
`flow_ids["stream_chat"]`), `trace_path` (the JSON lines the test flows' model writes: one
`start` and one `finished` / `cancelled` / `closed` / `failed` per streamed reply),
`log_path`, `startup_seconds`, and `run_body()` / `stream()` to call
`POST /api/v2/workflows` the way the bridge's runner does.

Test modules import helpers from here and also list it in `pytest_plugins`; pytest may then
meet it already imported, so it is left as written (PYTEST_DONT_REWRITE), not assert-rewritten.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import ROOT, free_port, wait_until

FLOWS_DIR = ROOT / "tests" / "flows"
# Measured at 4-8 s on a 2-core machine (lfx imports, then each flow's components built once).
START_TIMEOUT = 90.0
STOP_TIMEOUT = 10.0
# `python -m lfx`, except that `lfx serve` binds the port it is given or fails. By itself it
# moves to the next free port when its port looks taken (its check binds without SO_REUSEADDR),
# which is the case for a minute after a killed server on that port had clients (TIME_WAIT);
# uvicorn itself binds with SO_REUSEADDR, so a restart on the same port works at once.
LAUNCH_LFX = """
import lfx.cli.commands
lfx.cli.commands.is_port_in_use = lambda port, host="localhost": False
from lfx.__main__ import main
main()
"""
# Groups the tests sharing `lfx_server` on one pytest-xdist worker (`--dist loadgroup`).
LFX_GROUP = pytest.mark.xdist_group("lfx-serve")


def lfx_env(workdir: Path, api_key: str, token_delay: float | None = None) -> dict[str, str]:
    """The server's environment: ours minus LANGFLOW_*/LFX_*/BRIDGE_*, plus a sealed-off setup."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LANGFLOW_", "LFX_", "BRIDGE_"))
        and k not in ("VIRTUAL_ENV", "PYTHONPATH")
    }
    (workdir / "home").mkdir(exist_ok=True)
    env.update(
        {
            "HOME": str(workdir / "home"),
            "LANGFLOW_API_KEY": api_key,
            "LANGFLOW_CONFIG_DIR": str(workdir / "config"),
            # The test flows' model appends its start/finish/cancel records here.
            "LFX_TEST_TRACE": str(workdir / "trace.jsonl"),
            # Nothing may leave the machine: no telemetry; anything that still tries the
            # internet fails at once against a closed local port.
            "DO_NOT_TRACK": "true",
            "LANGFLOW_DO_NOT_TRACK": "true",
            "HTTP_PROXY": "http://127.0.0.1:9",
            "HTTPS_PROXY": "http://127.0.0.1:9",
            "http_proxy": "http://127.0.0.1:9",
            "https_proxy": "http://127.0.0.1:9",
            "NO_PROXY": "127.0.0.1,localhost,::1",
            "no_proxy": "127.0.0.1,localhost,::1",
        }
    )
    if token_delay is not None:
        env["LFX_TEST_TOKEN_DELAY"] = str(token_delay)
    return env


def iter_sse(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    """The JSON payloads of an SSE stream's events (`data:` lines; `id:` lines skipped)."""
    data: list[str] = []
    for line in lines:
        if line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
        elif not line and data:
            yield json.loads("\n".join(data))
            data = []
    if data:
        yield json.loads("\n".join(data))


@dataclass
class RunningLfx:
    """`lfx serve tests/flows` on a free port, in a throwaway folder."""

    workdir: Path
    port: int = field(default_factory=free_port)
    api_key: str = field(default_factory=lambda: f"lfx-test-{secrets.token_hex(8)}")
    token_delay: float | None = None
    flows_dir: Path = FLOWS_DIR
    # file stem -> flow id, as the server lists them (tests/flows: FLOW_IDS); set by start()
    flow_ids: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    startup_seconds: float = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        """The server's console output."""
        return self.workdir / "lfx.log"

    @property
    def trace_path(self) -> Path:
        return self.workdir / "trace.jsonl"

    @property
    def headers(self) -> dict[str, str]:
        return {"x-api-key": self.api_key}

    def log_tail(self, chars: int = 3000) -> str:
        if not self.log_path.exists():
            return ""
        return self.log_path.read_text(encoding="utf-8", errors="replace")[-chars:]

    def trace(self) -> list[dict[str, Any]]:
        """The records the test flows' model wrote so far (see tests/flows/components)."""
        if not self.trace_path.exists():
            return []
        lines = self.trace_path.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    # ----------------------------------------------------------------------------- process

    def start(self, timeout: float = START_TIMEOUT) -> RunningLfx:
        started = time.monotonic()
        cmd = [
            sys.executable,
            "-c",
            LAUNCH_LFX,
            "serve",
            str(self.flows_dir),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--log-level",
            "info",
        ]
        with self.log_path.open("ab") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                cmd,
                cwd=self.workdir,
                env=lfx_env(self.workdir, self.api_key, self.token_delay),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # its own process group: stop() ends all of it
            )
        try:
            wait_until(self._ready, timeout, f"lfx serve on port {self.port}")
        except TimeoutError as exc:
            self.stop()
            raise RuntimeError(
                f"{exc}; its log ({self.log_path}) ends:\n{self.log_tail()}"
            ) from exc
        self.startup_seconds = time.monotonic() - started
        return self

    def _ready(self) -> bool:
        """Healthy, and it is ours: it lists our flows to our key (read into flow_ids).

        `lfx serve` silently moves to another port when its port is taken, so a health answer
        alone could come from someone else's server.
        """
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(
                f"lfx serve exited with {self.proc.returncode}; its log ({self.log_path}) "
                f"ends:\n{self.log_tail()}"
            )
        try:
            if httpx.get(f"{self.url}/health", timeout=2.0).status_code != 200:
                return False
            listed = httpx.get(f"{self.url}/flows", headers=self.headers, timeout=5.0)
        except httpx.HTTPError:
            return False
        if listed.status_code != 200:
            return False
        self.flow_ids = {Path(f["relative_path"]).stem: f["id"] for f in listed.json()}
        expected = {p.stem for p in self.flows_dir.glob("*.json")}
        if set(self.flow_ids) != expected:
            raise RuntimeError(
                f"lfx serve on port {self.port} serves {self.flow_ids}, not {expected}"
            )
        return True

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM the process group, SIGKILL after `timeout` seconds.

        On SIGTERM uvicorn waits for open responses to end, so with a stream still open this
        takes the whole `timeout`; kill() is the way to cut streams.
        """
        self._signal(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """SIGKILL the process group: no shutdown code runs; open streams break off."""
        self._signal(signal.SIGKILL, STOP_TIMEOUT)

    def restart(self, timeout: float = START_TIMEOUT) -> RunningLfx:
        """Stop (if running) and start again on the same port ("lfx comes back")."""
        self.stop()
        return self.start(timeout)

    def _signal(self, signum: int, timeout: float) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signum)  # start_new_session: the group id is the child's pid
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=timeout)
        except ProcessLookupError:
            pass

    # ----------------------------------------------------------------------------- API

    def run_body(self, flow: str, text: str, session_id: str) -> dict[str, Any]:
        """The body the bridge's runner posts to `/api/v2/workflows` for `flow` (a stem)."""
        return {
            "flow_id": self.flow_ids[flow],
            "input_value": text,
            "session_id": session_id,
            "mode": "stream",
            "stream_protocol": "agui",
        }

    def stream(
        self, flow: str, text: str, session_id: str, timeout: float = 30.0
    ) -> list[dict[str, Any]]:
        """Run `flow` to its end; the AG-UI events it streamed, in order."""
        with httpx.stream(
            "POST",
            f"{self.url}/api/v2/workflows",
            json=self.run_body(flow, text, session_id),
            headers=self.headers,
            timeout=timeout,
        ) as response:
            if response.status_code != 200:
                response.read()
                raise AssertionError(f"{response.status_code}: {response.text}")
            return list(iter_sse(response.iter_lines()))


@contextmanager
def lfx_serving(
    token_delay: float | None = None,
    flows_dir: Path = FLOWS_DIR,
    keep_workdir: Callable[[], bool] = lambda: False,
) -> Iterator[RunningLfx]:
    """Start `lfx serve <flows_dir>` in a fresh temp folder; stop it and remove the folder after.

    The folder (log, trace) is kept when `keep_workdir()` says so at the end, e.g. after a
    test failure.
    """
    workdir = Path(tempfile.mkdtemp(prefix="lfx-serve-test-"))
    running = RunningLfx(workdir=workdir, token_delay=token_delay, flows_dir=flows_dir)
    try:
        yield running.start()
    finally:
        running.stop()
        if not keep_workdir():
            shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def lfx_server(request: pytest.FixtureRequest) -> Iterator[RunningLfx]:
    """One `lfx serve` of tests/flows for the whole test session."""
    with lfx_serving(keep_workdir=lambda: bool(request.session.testsfailed)) as running:
        reporter = request.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(
                f"\nlfx serve answered after {running.startup_seconds:.1f} s on {running.url} "
                f"(log: {running.log_path})"
            )
        yield running


StartLfx = Callable[..., RunningLfx]


@pytest.fixture
def start_lfx(request: pytest.FixtureRequest) -> Iterator[StartLfx]:
    """Start servers of the test's own; all are stopped when the test ends.

    `start_lfx(token_delay=None, flows_dir=FLOWS_DIR)`; a `token_delay` (seconds) sets
    LFX_TEST_TOKEN_DELAY, the pace of slow_chat's extra tokens. Their folders (log, trace) are
    kept when the test failed.
    """
    failed_before = request.session.testsfailed
    with ExitStack() as stack:

        def start(token_delay: float | None = None, flows_dir: Path = FLOWS_DIR) -> RunningLfx:
            return stack.enter_context(
                lfx_serving(
                    token_delay=token_delay,
                    flows_dir=flows_dir,
                    keep_workdir=lambda: request.session.testsfailed > failed_before,
                )
            )

        yield start
