"""`streamlit-bridge up` (what `make run` starts), `chat` and `demo-bot`, run as a user runs
them: real subprocesses on free ports, driven over HTTP and WebSocket, stopped by signal.

`up` starts three children (the bridge, the demo bot, and `chat`, which runs Streamlit as
its own child) and must leave nothing behind when it is told to stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Origin

from tests.lfx_support import LFX_GROUP, RunningLfx
from tests.support import ROOT, RunningBridge, bridge_env, free_port, wait_until
from tests.wsclient import recv, recv_until

pytestmark = pytest.mark.slow
pytest_plugins = ["tests.lfx_support"]

START_S = 60  # bound of every wait for a process to answer (Streamlit starts slowest)


def _reply(text: str, turn: int) -> str:
    """The demo bot's answer, written out (not taken from the bot's code)."""
    return (
        f"You said: {text} — I am the demo bot, and this reply is streamed to every open "
        f"tab word by word through the bridge (turn {turn} of this chat)."
    )


class Command:
    """`python -m bridge ARGS` in its own process group, its output in a log file."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None):
        self.log_path = log_path
        with log_path.open("ab") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bridge", *args], cwd=ROOT, env=env or bridge_env(),
                stdout=log, stderr=log, start_new_session=True,
            )  # fmt: skip
        self.pid = self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def answers(self, url: str) -> bool:
        """True once `url` answers 200 (fails at once if the command has exited)."""
        if self.proc.poll() is not None:
            raise RuntimeError(f"exited with {self.proc.returncode}:\n{self.log()}")
        try:
            return httpx.get(url, timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    def descendants(self) -> list[psutil.Process]:
        return psutil.Process(self.pid).children(recursive=True)

    def cleanup(self) -> None:
        """Whatever happened, nothing started here outlives the test: SIGKILL the group."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)


@pytest.fixture
def commands(tmp_path: Path) -> Iterator[list[Command]]:
    started: list[Command] = []
    yield started
    for command in started:
        command.cleanup()


def _survivors(processes: list[psutil.Process]) -> list[str]:
    alive = []
    for p in processes:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(f"{p.pid} {' '.join(p.cmdline())[:160]}")
        except psutil.NoSuchProcess:
            continue
    return alive


def _all_gone(processes: list[psutil.Process], what: str) -> None:
    try:
        wait_until(lambda: not _survivors(processes), 15, what)
    except TimeoutError:
        raise AssertionError(f"{what}: still running: {_survivors(processes)}") from None


async def _streamed_reply(bridge_url: str, session: str, question: str) -> list[dict[str, Any]]:
    """Post `question` as the user and return the socket's events up to the stored reply."""
    ws_url = "ws" + bridge_url.removeprefix("http")
    async with connect(f"{ws_url}/api/v1/sessions/{session}/ws", compression=None) as ws:
        assert (await recv(ws))["event"] == "hello"
        async with httpx.AsyncClient(base_url=bridge_url, timeout=10) as http:
            posted = await http.post(
                f"/api/v1/sessions/{session}/messages", json={"role": "user", "content": question}
            )
            assert posted.status_code == 200, posted.text
        return await recv_until(ws, lambda e: e["event"] == "stream.end", timeout=START_S)


def _check_streamed(events: list[dict[str, Any]], expected: str) -> None:
    """A stream (start, deltas, end) of `expected`, sent in words: the bridge may merge
    words that come close together (BRIDGE_STREAM_COALESCE_S), never split one."""
    kinds = [e["event"] for e in events if e["event"] not in ("presence", "message")]
    assert kinds[0] == "stream.start" and kinds[-1] == "stream.end", kinds
    deltas = [e["delta"] for e in events if e["event"] == "stream.delta"]
    assert "".join(deltas) == expected
    assert all(d.startswith(" ") for d in deltas[1:]), deltas  # whole words only
    end = events[-1]["message"]
    assert (end["role"], end["content"]) == ("ai", expected)


async def _socket_close_code(url: str, origin: str) -> int | None:
    """None if the socket was accepted (its hello arrived), else the close code."""
    async with connect(url, origin=Origin(origin), compression=None) as ws:
        try:
            assert (await recv(ws))["event"] == "hello"
            return None
        except ConnectionClosed as closed:
            return closed.rcvd.code if closed.rcvd else 1006


async def test_up_runs_bridge_page_and_bot_and_sigterm_stops_every_child(
    commands: list[Command], tmp_path: Path
) -> None:
    port, chat_port = free_port(), free_port()
    bridge_url, page_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{chat_port}"
    up = Command(
        ["up", "--port", str(port), "--chat-port", str(chat_port), "--store", "memory://"],
        tmp_path / "up.log",
    )
    commands.append(up)
    await asyncio.to_thread(
        wait_until, lambda: up.answers(f"{bridge_url}/healthz"), START_S, "the bridge of `up`"
    )
    await asyncio.to_thread(
        wait_until, lambda: up.answers(f"{page_url}/_stcore/health"), START_S, "the chat page"
    )
    async with httpx.AsyncClient(base_url=bridge_url, timeout=10) as http:
        ready = (await http.get("/readyz")).json()
        assert ready["store"] == "memory://", ready

        # The demo bot answers, streaming its reply word by word; the reply is stored.
        events = await _streamed_reply(bridge_url, "up-1", "hello from a test")
        _check_streamed(events, _reply("hello from a test", 1))
        history = (await http.get("/api/v1/sessions/up-1/messages")).json()
        assert [(m["seq"], m["role"]) for m in history] == [(1, "ai"), (2, "user"), (3, "ai")]
        assert history[-1]["content"] == _reply("hello from a test", 1)

        # `up` allows the page's origin (whatever --chat-port is), and only that.
        ws = f"ws://127.0.0.1:{port}/api/v1/sessions/up-2/ws"
        assert await _socket_close_code(ws, page_url) is None
        assert await _socket_close_code(ws, f"http://localhost:{chat_port}") is None
        assert await _socket_close_code(ws, "http://evil.example") == 1008
        assert await _socket_close_code(ws, "http://127.0.0.1:5001") == 1008  # the default
        post = {"role": "user", "content": "x"}
        for origin, status in ((page_url, 200), ("http://evil.example", 403)):
            answer = await http.post(
                "/api/v1/sessions/up-3/messages", json=post, headers={"Origin": origin}
            )
            assert answer.status_code == status, (origin, answer.text)

    children = up.descendants()
    names = " ".join(" ".join(p.cmdline()) for p in children)
    for part in ("bridge serve", "bridge demo-bot", "bridge chat", "streamlit run"):
        assert part in names, names
    up.proc.send_signal(signal.SIGTERM)  # what `kill <pid>` or a service manager sends
    code = await asyncio.to_thread(up.proc.wait, 30)
    assert code == 128 + signal.SIGTERM, up.log()
    _all_gone(children, "every process `up` started")


async def test_demo_bot_command_answers_through_the_bridge_in_bridge_url(
    commands: list[Command], start_bridge: Any, tmp_path: Path
) -> None:
    bridge: RunningBridge = start_bridge()
    bot = Command(["demo-bot"], tmp_path / "bot.log", env=bridge_env(BRIDGE_URL=bridge.url))
    commands.append(bot)
    events = await _streamed_reply(bridge.url, "bot-1", "what now?")
    _check_streamed(events, _reply("what now?", 1))
    bot.proc.send_signal(signal.SIGTERM)
    await asyncio.to_thread(bot.proc.wait, 20)


@pytest.mark.parametrize("stop", ["sigterm", "ctrl-c"])
async def test_chat_command_serves_the_page_and_stops_with_its_streamlit(
    commands: list[Command], bridge: RunningBridge, tmp_path: Path, stop: str
) -> None:
    chat_port = free_port()
    chat = Command(
        ["chat", "--port", str(chat_port), "--bridge", bridge.url], tmp_path / "chat.log"
    )
    commands.append(chat)
    page_url = f"http://127.0.0.1:{chat_port}"
    await asyncio.to_thread(
        wait_until, lambda: chat.answers(f"{page_url}/_stcore/health"), START_S, "the chat page"
    )
    async with httpx.AsyncClient(timeout=10) as http:
        assert "<title>" in (await http.get(page_url)).text  # Streamlit's page shell
    children = chat.descendants()
    names = [" ".join(p.cmdline()) for p in children]
    assert any("streamlit run" in n and "page.py" in n for n in names), names
    streamlit = next(p for p, n in zip(children, names, strict=True) if "streamlit run" in n)
    assert streamlit.environ().get("BRIDGE_URL") == bridge.url, json.dumps(names)
    if stop == "sigterm":
        chat.proc.send_signal(signal.SIGTERM)  # `kill <pid>`
    else:
        os.killpg(chat.pid, signal.SIGINT)  # Ctrl-C in a terminal: the whole foreground group
    await asyncio.to_thread(chat.proc.wait, 30)
    _all_gone(children, f"the chat command's Streamlit after {stop}")


@LFX_GROUP
async def test_up_with_a_flow_answers_with_it_instead_of_the_demo_bot(
    commands: list[Command], tmp_path: Path, lfx_server: RunningLfx
) -> None:
    port, chat_port = free_port(), free_port()
    bridge_url = f"http://127.0.0.1:{port}"
    args = ["up", "--port", str(port), "--chat-port", str(chat_port), "--store", "memory://"]
    args += ["--langflow-url", lfx_server.url, "--flow", lfx_server.flow_ids["stream_chat"]]
    # The key through the environment, as docs/langflow.md advises (`ps` shows arguments).
    up = Command(
        args, tmp_path / "up.log", env=bridge_env(BRIDGE_LANGFLOW_API_KEY=lfx_server.api_key)
    )
    commands.append(up)
    await asyncio.to_thread(
        wait_until, lambda: up.answers(f"{bridge_url}/healthz"), START_S, "the bridge of `up`"
    )
    events = await _streamed_reply(bridge_url, "up-flow", "hello flow")
    assert events[-1]["message"]["content"] == "You said: hello flow"
    assert any(e["event"] == "run.start" for e in events)
    names = " ".join(" ".join(p.cmdline()) for p in up.descendants())
    assert "bridge chat" in names and "demo-bot" not in names, names
    assert lfx_server.api_key not in up.log()
    assert "the flow on" in up.log()
