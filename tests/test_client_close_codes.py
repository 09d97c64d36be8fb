"""Every close code whose rule is "stop" stops every Python client, against real bridges:
the `Subscription` (what the demo bot, scripts and the page's Python side build on) ends
with `SubscriptionClosed`, `streamlit-bridge tail` exits 1 naming the code. And the codes
whose rule is "come back" bring `tail` back (a restart, an expired token). `listener.js`
follows the same table: tests/test_client_listener.py.

A client that retried a "stop" code forever would hang here until the bounded wait fails.
"""

from __future__ import annotations

import queue
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx
import pytest

from bridge.wire import CLOSE_CODES, AfterClose
from streamlit_client.client import BridgeClient
from streamlit_client.subscription import SubscriptionClosed
from tests.support import ROOT, RunningBridge, bridge_env, free_port, wait_until
from tests.test_client import Collector

KEY = "close-codes-test-key-" + "k" * 24
BIG = 1_100_000  # characters: a frame over the client's 1 MiB limit (websockets' default)
STOP_CODES = sorted(c.code for c in CLOSE_CODES.values() if c.then is AfterClose.STOP)


@dataclass
class Bridges:
    """An open bridge (no key, large messages allowed) and one with an API key."""

    open: RunningBridge
    keyed: RunningBridge


def running_bridges(tmp: Path, **env: str) -> Iterator[Bridges]:
    """Start both bridges with `env`, yield them, stop them."""
    running = Bridges(
        RunningBridge(
            free_port(), "memory://", bridge_env(**env), tmp / "open.log",
            extra_args=["--max-message-bytes", str(2 * BIG)],
        ),
        RunningBridge(
            free_port(), "memory://", bridge_env(**env, BRIDGE_API_KEY=KEY), tmp / "keyed.log"
        ),
    )  # fmt: skip
    try:
        yield Bridges(running.open.start(), running.keyed.start())
    finally:
        running.open.stop()
        running.keyed.stop()


@pytest.fixture(scope="module")
def bridges(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bridges]:
    yield from running_bridges(tmp_path_factory.mktemp("close-codes"))


@dataclass
class Case:
    """How to make the bridge close a subscriber with one code."""

    bridge: RunningBridge
    session_id: str
    api_key: str | None  # what the client is given: None on the keyed bridge means no token
    after_subscribed: Callable[[], None] = lambda: None


def case(code: int, bridges: Bridges) -> Case:
    sid = f"cc-{uuid.uuid4().hex[:10]}"
    if code == 1007:  # an invalid subscription: the session id
        return Case(bridges.open, "not a valid id", None)
    if code == 1008:  # refused: a bridge with a key and a socket without a token
        return Case(bridges.keyed, sid, None)
    if code == 1009:  # a frame over the size limit: the client refuses it
        with BridgeClient(bridges.open.url) as api:
            api.post_message(sid, "ai", "x" * BIG)
        return Case(bridges.open, sid, None)
    if code == 4004:  # the session deleted (with tokens, its sockets are closed)

        def delete() -> None:
            with BridgeClient(bridges.keyed.url, api_key=KEY) as api:
                wait_until(lambda: api.session_info(sid)["subscribers"] == 1, 10, "subscribed")
                api.delete_session(sid)

        with BridgeClient(bridges.keyed.url, api_key=KEY) as api:
            api.create_session(sid)
        return Case(bridges.keyed, sid, KEY, delete)
    raise AssertionError(f"no scenario for close code {code}")


@pytest.mark.parametrize("code", STOP_CODES)
def test_a_subscription_stops(code: int, bridges: Bridges) -> None:
    scenario = case(code, bridges)
    with BridgeClient(scenario.bridge.url, api_key=scenario.api_key) as api:
        collector = Collector(api.subscribe(scenario.session_id))
        try:
            scenario.after_subscribed()
            collector.wait_for(lambda: collector.error is not None, f"the {code} to end it")
        finally:
            collector.close()
    assert isinstance(collector.error, SubscriptionClosed), repr(collector.error)
    assert collector.error.code == code


@pytest.mark.parametrize("code", STOP_CODES)
def test_tail_stops(code: int, bridges: Bridges) -> None:
    scenario = case(code, bridges)
    key = ["--api-key", scenario.api_key] if scenario.api_key else []
    tail = Tail(scenario.session_id, scenario.bridge.url, *key)
    try:
        scenario.after_subscribed()
        assert tail.proc.wait(timeout=30) == 1
    finally:
        tail.stop()
    assert f"bridge closed the connection ({code} " in tail.stderr_text(), tail.stderr_text()


class Tail:
    """`python -m bridge tail` with its stdout and stderr read line by line."""

    def __init__(self, session_id: str, url: str, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bridge", "tail", session_id, "--bridge", url, *args],
            cwd=ROOT, env=bridge_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        self.out: queue.Queue[str] = queue.Queue()
        self.err: queue.Queue[str] = queue.Queue()
        self.seen_err: list[str] = []
        self.readers = [
            threading.Thread(target=self._read, args=(stream, into), daemon=True)
            for stream, into in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))
        ]
        for reader in self.readers:
            reader.start()

    @staticmethod
    def _read(stream: IO[str], into: queue.Queue[str]) -> None:
        for line in stream:
            into.put(line.rstrip("\n"))

    def line(self) -> str:
        """The next line on stdout."""
        return self.out.get(timeout=20)

    def note(self, containing: str) -> str:
        """The next line on stderr that contains `containing`."""
        while True:
            line = self.err.get(timeout=20)
            self.seen_err.append(line)
            if containing in line:
                return line

    def stderr_text(self) -> str:
        """Everything written to stderr, once the process has ended."""
        self.proc.wait(timeout=10)
        for reader in self.readers:
            reader.join(10)
        while not self.err.empty():
            self.seen_err.append(self.err.get())
        return "\n".join(self.seen_err)

    def stop(self) -> None:
        """Terminate if still running; close the pipes once the readers are done."""
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(timeout=10)
        for reader in self.readers:
            reader.join(10)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def _post(url: str, session_id: str, text: str, api_key: str | None = None) -> None:
    headers = {"x-api-key": api_key} if api_key else {}
    answer = httpx.post(
        f"{url}/api/v1/sessions/{session_id}/messages",
        json={"role": "ai", "content": text},
        headers=headers,
        timeout=10,
    )
    answer.raise_for_status()


def test_tail_comes_back_after_a_restart(start_bridge: Callable[..., RunningBridge]) -> None:
    bridge = start_bridge(store="sqlite")
    tail = Tail("cc-restart", bridge.url)
    try:
        assert tail.line().startswith("[1] ai:")  # the welcome
        bridge.restart()  # 1001, then refused connections until it is back: come back
        _post(bridge.url, "cc-restart", "after the restart")
        assert tail.line() == "[2] ai: after the restart"
        assert tail.proc.poll() is None
    finally:
        tail.stop()


def test_tail_outlives_its_session_tokens(start_bridge: Callable[..., RunningBridge]) -> None:
    bridge = start_bridge(env={"BRIDGE_API_KEY": KEY, "BRIDGE_TOKEN_TTL_S": "1"})
    tail = Tail("cc-token", bridge.url, "--api-key", KEY)
    try:
        assert tail.line().startswith("[1] ai:")
        tail.note("token expired")  # 1008 "session token expired": mint, come back
        _post(bridge.url, "cc-token", "with a new token", KEY)
        assert tail.line() == "[2] ai: with a new token"
        assert tail.proc.poll() is None
    finally:
        tail.stop()

