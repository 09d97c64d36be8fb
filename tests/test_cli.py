"""The CLI against a real bridge: serve (start line), send, tail, listen, and errors."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading

import httpx

from tests.support import ROOT, RunningBridge, bridge_env, free_port


def _cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bridge", *args],
        cwd=ROOT,
        env=env or bridge_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_send_and_listen(bridge: RunningBridge) -> None:
    sent = _cli("send", "cli-s", "hello there", "--role", "user", "--bridge", bridge.url)
    assert sent.returncode == 0, sent.stderr
    assert json.loads(sent.stdout)["content"] == "hello there"
    got = _cli("listen", "--timeout", "5", env=bridge_env(BRIDGE_URL=bridge.url))
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["session_id"] == "cli-s"
    none = _cli("listen", "--timeout", "0.2", "--bridge", bridge.url)
    assert none.returncode == 3 and "no user message" in none.stderr


def test_tail_prints_messages_as_they_arrive(bridge: RunningBridge) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge", "tail", "cli-t", "--bridge", bridge.url],
        cwd=ROOT,
        env=bridge_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True).start()  # type: ignore[union-attr]
    try:
        assert "[1] ai:" in lines.get(timeout=15)  # the welcome message, replayed
        httpx.post(
            f"{bridge.url}/api/v1/sessions/cli-t/messages",
            json={"role": "user", "content": "live one"},
        )
        assert lines.get(timeout=15).strip() == "[2] user: live one"
    finally:
        proc.terminate()
        proc.communicate(timeout=10)  # closes the pipes too


def test_client_errors_are_clear() -> None:
    port = free_port()
    down = _cli("send", "s", "x", "--bridge", f"http://127.0.0.1:{port}")
    assert down.returncode == 1 and "cannot reach the bridge" in down.stderr
    assert "Traceback" not in down.stderr


def test_send_reports_the_bridges_4xx(bridge: RunningBridge) -> None:
    bad = _cli("send", "bad id", "x", "--bridge", bridge.url)
    assert bad.returncode == 1 and "422" in bad.stderr and "session id" in bad.stderr


def test_serve_rejects_bad_settings_clearly() -> None:
    bad = _cli("serve", "--store", "ftp://nowhere", "--port", str(free_port()))
    assert bad.returncode == 2 and "unknown store URL" in bad.stderr
    bad_env = _cli("serve", env=bridge_env(BRIDGE_PORT="eighty"))
    assert bad_env.returncode == 2 and "BRIDGE_PORT" in bad_env.stderr
