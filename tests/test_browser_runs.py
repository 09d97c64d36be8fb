"""Replies that are working or streaming, in a real Chromium against a real bridge and a
real `streamlit run`: the Stop button, and the stopped marker in every tab.

The reply comes from a real producer: a thread POSTing an NDJSON reply to
`/api/v1/sessions/{id}/messages/stream` over its own socket, one chunk at a time, for as
long as it has chunks and the bridge has not answered (it watches its socket for the
answer between chunks, the way a well-behaved producer stops when its request is
answered). One bridge and one page serve those tests; each test has its own session and
browser context, and opens two tabs of that session.

The runner's replies (issue 14), with real parts only: a bridge of their own running a flow
of the real `lfx serve` of tests/flows (`lfx_server`) for every user message, a page of its
own, and a message typed in the page. `slow_chat`: the working indicator before the first
token in both tabs, the tokens in both, Stop in one tab ends the reply in both (stored
partial and marked, the run cancelled in lfx). Langflow unreachable: the error note in plain
words, and the user's message stays. The indicator stays until the first token (the runner
opens the reply's stream before the flow has answered). Screenshots go to /tmp/runs-real-*.png.
"""

from __future__ import annotations

import http.client
import json
import re
import select
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import BrowserContext, Page, expect

from streamlit_client.client import BridgeClient, session_path
from streamlit_client.render import STOPPED_MARKER
from tests.browser_support import RunningPage, open_chat, screenshot_folder
from tests.lfx_support import LFX_GROUP, RunningLfx
from tests.support import RunningBridge, bridge_env, free_port, wait_until

pytest_plugins = ["tests.lfx_support", "tests.browser_support"]
pytestmark = pytest.mark.browser

MESSAGES = '[data-testid="stChatMessageContent"]'
TIMEOUT_MS = 10_000
ANYTHING = re.compile(r".*", re.S)
CHUNK_PACE_S = 0.1  # between chunks, unless the answer comes first
CHUNKS = [f"w{i:03d} " for i in range(300)]  # 30 s of reply at that pace: never all sent


@pytest.fixture
def session_prefix() -> str:
    return "r-"


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    """Where the tests write their screenshots: `RUNS_SCREENSHOT_DIR`, else tmp_path."""
    return screenshot_folder("RUNS_SCREENSHOT_DIR", tmp_path)


class SlowProducer(threading.Thread):
    """Streams `chunks` as one reply, one NDJSON line per `CHUNK_PACE_S`, and stops sending
    as soon as the bridge answers; then reads the answer."""

    def __init__(self, bridge: RunningBridge, session_id: str, chunks: list[str]) -> None:
        super().__init__(daemon=True)
        self.port = bridge.port
        self.path = f"{session_path(session_id)}/messages/stream?role=ai"
        self.chunks = chunks
        self.sent = 0
        self.answered_early = False  # the answer came while chunks were left to send
        self.status: int | None = None
        self.answer: dict[str, Any] = {}
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            self._produce()
        except BaseException as exc:  # reported by the test
            self.failure = exc

    def _produce(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as sock:
            sock.sendall(
                f"POST {self.path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
                "Content-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
            )
            for chunk in self.chunks:
                line = (json.dumps({"delta": chunk}) + "\n").encode()
                sock.sendall(b"%x\r\n%s\r\n" % (len(line), line))
                self.sent += 1
                readable, _, _ = select.select([sock], [], [], CHUNK_PACE_S)
                if readable:  # the bridge answered: a producer stops here
                    self.answered_early = self.sent < len(self.chunks)
                    break
            else:
                sock.sendall(b"0\r\n\r\n")
            response = http.client.HTTPResponse(sock)
            response.begin()
            self.status = response.status
            self.answer = json.loads(response.read())

    def finish(self, timeout: float = 20.0) -> dict[str, Any]:
        """The stored message the bridge answered with (after checking it did answer)."""
        self.join(timeout)
        assert not self.is_alive(), "the producer's request was never answered"
        assert self.failure is None, self.failure
        assert self.status == 200, (self.status, self.answer)
        return self.answer


def stopped_reply(content: str) -> re.Pattern[str]:
    """A drawn message: `content`, then the stopped marker under it."""
    return re.compile(rf"\s*{re.escape(content.strip())}\s*{re.escape(STOPPED_MARKER)}\s*")


def test_stop_in_one_tab_ends_a_streamed_reply_in_both(
    context: BrowserContext,
    chat_page: RunningPage,
    shared_bridge: RunningBridge,
    api: BridgeClient,
    session_id: str,
    screenshots: Path,
) -> None:
    first = open_chat(context, chat_page, session_id)
    second = open_chat(context, chat_page, session_id)
    producer = SlowProducer(shared_bridge, session_id, CHUNKS)
    producer.start()
    try:
        for tab in (first, second):
            expect(tab.locator(".sb-stream-text")).to_contain_text("w005")
            expect(tab.locator(".sb-stream .sb-stop")).to_be_visible()
            expect(tab.locator(".sb-stop")).to_have_count(1)
        first.screenshot(path=str(screenshots / "runs-streaming.png"))
        first.locator(".sb-stop").click()
        stored = producer.finish()
    finally:
        producer.join(40)  # the reply ends by itself within 30 s if Stop did nothing
    assert producer.answered_early, f"answered only after all {producer.sent} chunks"
    assert stored["stopped"] is True
    assert stored["content"] == "".join(CHUNKS[: stored["content"].count("w")])
    assert stored["content"].startswith("".join(CHUNKS[:6]))
    for tab in (first, second):
        # Drawn by Python now: the listener's bubble and its Stop button are gone.
        expect(tab.locator(".sb-stream")).to_have_count(0)
        expect(tab.locator(".sb-stop")).to_have_count(0)
        expect(tab.locator(MESSAGES)).to_have_text([ANYTHING, stopped_reply(stored["content"])])
    second.screenshot(path=str(screenshots / "runs-stopped.png"))
    last = api.messages(session_id)[-1]
    assert (last.content, last.stopped, last.seq) == (stored["content"], True, stored["seq"])
    # History draws the marker too (a reload reads it over HTTP).
    second.reload()
    expect(second.locator(MESSAGES)).to_have_text([ANYTHING, stopped_reply(stored["content"])])


def test_stop_over_http_ends_the_reply_and_the_next_one_streams_normally(
    context: BrowserContext,
    chat_page: RunningPage,
    shared_bridge: RunningBridge,
    api: BridgeClient,
    session_id: str,
) -> None:
    tab = open_chat(context, chat_page, session_id)
    producer = SlowProducer(shared_bridge, session_id, CHUNKS)
    producer.start()
    try:
        expect(tab.locator(".sb-stream-text")).to_contain_text("w002")
        assert api.stop(session_id) == {"session_id": session_id, "stopping": True}
        stored = producer.finish()
    finally:
        producer.join(40)
    assert producer.answered_early and stored["stopped"] is True
    expect(tab.locator(MESSAGES)).to_have_text([ANYTHING, stopped_reply(stored["content"])])
    # The next reply is an ordinary one: no marker, no Stop left over.
    done = SlowProducer(shared_bridge, session_id, ["all ", "of ", "it"])
    done.start()
    assert "stopped" not in done.finish()
    expect(tab.locator(MESSAGES)).to_have_text(
        [ANYTHING, stopped_reply(stored["content"]), "all of it"]
    )
    expect(tab.locator(".sb-stop")).to_have_count(0)


# ------------------------------------------------------------------ the runner, for real
#
# A bridge of its own that runs a flow for every user message (the runner: BRIDGE_LANGFLOW_URL,
# BRIDGE_FLOW, BRIDGE_LANGFLOW_API_KEY), and a Streamlit page of its own on that bridge; the
# user types in the page. The flow runs in the real `lfx serve` of tests/flows (`lfx_server`).

SLOW_TOKENS = 200  # slow_chat's counting after "You said: ...": " 1" .. " 200", one per 50 ms
SLOW_REPLY_S = SLOW_TOKENS * 0.05  # how long that takes, if nothing stops it
PAGE_LOAD_TIMEOUT_MS = 30_000  # a fresh Streamlit process's first page, on a busy machine
SCREENSHOTS = Path("/tmp")  # runs-real-*.png, to look at


@dataclass
class RunnerChat:
    """A bridge with the runner on, and a chat page on that bridge."""

    bridge: RunningBridge
    page: RunningPage

    def replies(self, session_id: str) -> list[dict[str, Any]]:
        """The session's stored ai replies (GET /api/v1/sessions/{id}/messages)."""
        resp = httpx.get(f"{self.bridge.url}{session_path(session_id)}/messages", timeout=5)
        assert resp.status_code == 200, resp.text
        return [m for m in resp.json() if m["role"] == "ai"][1:]  # the welcome aside

    def stored_reply(self, session_id: str, timeout: float = 20.0) -> dict[str, Any]:
        """The session's one stored ai reply, once there is one."""
        found: list[dict[str, Any]] = []

        def stored() -> bool:
            found[:] = self.replies(session_id)
            return bool(found)

        wait_until(stored, timeout, f"a stored reply in {session_id}")
        assert len(found) == 1, found
        return found[0]


@contextmanager
def runner_chat(tmp: Path, **runner_env: str) -> Iterator[RunnerChat]:
    """A bridge whose runner is set by `runner_env`, and a page on it; both stopped after."""
    page_port = free_port()
    bridge = RunningBridge(
        port=free_port(),
        store=f"sqlite:///{tmp / 'bridge.db'}",
        env=bridge_env(BRIDGE_ALLOWED_ORIGINS=f"http://127.0.0.1:{page_port}", **runner_env),
        log_path=tmp / "bridge.log",
    )
    with ExitStack() as stack:
        bridge.start()
        stack.callback(bridge.stop)
        page = RunningPage(port=page_port, bridge_url=bridge.url, log_path=tmp / "page.log")
        page.start()
        stack.callback(page.stop)
        yield RunnerChat(bridge, page)


@pytest.fixture(scope="module")
def slow_chat(
    lfx_server: RunningLfx, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunnerChat]:
    """A bridge running lfx's `slow_chat` for every user message, and its page."""
    with runner_chat(
        tmp_path_factory.mktemp("slow-chat"),
        BRIDGE_LANGFLOW_URL=lfx_server.url,
        BRIDGE_FLOW=lfx_server.flow_ids["slow_chat"],
        BRIDGE_LANGFLOW_API_KEY=lfx_server.api_key,
    ) as chat:
        yield chat


def send_typed(tab: Page, text: str) -> None:
    """Type `text` in the chat box and press Enter."""
    box = tab.get_by_test_id("stChatInputTextArea")
    box.fill(text)
    box.press("Enter")


# Installed in a tab before the user types: every state the tab's listener goes through until
# the reply's first token, in `window.__runStates`. A MutationObserver on the listener's own
# element sees each change after the task that made it (each WebSocket frame is one task), even
# while Streamlit has the element off the page during a rerun. A state: `attached` (the
# listener's element is in the page), `bubble` (a reply bubble of the listener: working or
# streaming), `thinking` (a working indicator reading "Thinking" that is not hidden, and
# rendered when attached), `text` (the reply text drawn so far).
WATCH_RUN = """() => {
  const root = document.querySelector(".sb-listener");
  const states = [];
  window.__runStates = states;
  let last = "";
  const shown = (node) => !node.hidden && !node.closest("[hidden]")
    && (!root.isConnected || node.checkVisibility());
  const look = () => {
    const text = [...root.querySelectorAll(".sb-stream-text")]
      .map((node) => node.textContent).join("");
    const state = {
      attached: root.isConnected,
      bubble: root.querySelectorAll(".sb-run, .sb-stream").length > 0,
      thinking: [...root.querySelectorAll(".sb-run .sb-thinking")]
        .some((node) => shown(node) && node.textContent.startsWith("Thinking")),
      text,
    };
    const key = JSON.stringify(state);
    if (key === last) return;
    last = key;
    states.push(state);
    if (text.trim()) observer.disconnect();
  };
  const observer = new MutationObserver(look);
  const watch = { childList: true, subtree: true, attributes: true, characterData: true };
  observer.observe(root, watch);
  observer.observe(document.body, watch);
  look();
}"""
FIRST_TOKEN = "window.__runStates.some((s) => s.text.trim())"


def states_until_first_token(tab: Page) -> list[dict[str, Any]]:
    """The listener's states from the user's message to the reply's first token (excluded)."""
    tab.wait_for_function(FIRST_TOKEN, timeout=TIMEOUT_MS)
    states: list[dict[str, Any]] = tab.evaluate("window.__runStates")
    first = next(i for i, s in enumerate(states) if s["text"].strip())
    assert "You said".startswith(states[first]["text"].strip()), states[first]
    return states[:first]


def reply_records(lfx: RunningLfx, session_id: str) -> list[dict[str, Any]]:
    """The flow model's trace records of the session's replies (start, then how it ended)."""
    return [r for r in lfx.trace() if r.get("session_id") == session_id]


def lfx_reply_ending(lfx: RunningLfx, session_id: str) -> list[dict[str, Any]]:
    """The trace of the session's one reply in lfx, once it says how the reply ended, or
    once the reply is overdue: when slow_chat's counting would be over had it not been
    cancelled (after that, a reply never cancelled would have written `finished`).

    Usually lfx cancels the flow at once (`cancelled`). Sometimes it leaves the model's
    stream suspended where it was, and the `closed` record comes only when lfx shuts down.
    """
    found: list[dict[str, Any]] = []

    def ended_or_overdue() -> bool:
        found[:] = reply_records(lfx, session_id)
        if not found:
            return False
        assert found[0]["event"] == "start", found
        return len(found) > 1 or time.time() > found[0]["time"] + SLOW_REPLY_S + 5

    wait_until(ended_or_overdue, SLOW_REPLY_S + 20, f"the lfx trace of {session_id}'s reply")
    return found


def counted_to(text: str, n: int) -> str:
    """slow_chat's reply to `text` once it has counted to `n`."""
    return f"You said: {text}" + "".join(f" {i}" for i in range(1, n + 1))


@LFX_GROUP
def test_typed_message_shows_the_indicator_then_tokens_and_stop_cancels_the_lfx_run(
    context: BrowserContext, slow_chat: RunnerChat, lfx_server: RunningLfx, session_id: str
) -> None:
    first = open_chat(context, slow_chat.page, session_id, PAGE_LOAD_TIMEOUT_MS)
    second = open_chat(context, slow_chat.page, session_id)
    for tab in (first, second):
        tab.evaluate(WATCH_RUN)
    text = "count for me, slowly"
    send_typed(first, text)
    # What the user sees before the first token (taken as soon as the reply's bubble is there).
    second.wait_for_function("window.__runStates.some((s) => s.bubble)", timeout=TIMEOUT_MS)
    second.screenshot(path=str(SCREENSHOTS / "runs-real-before-first-token.png"))
    # Both tabs showed the working indicator, "Thinking…", before the reply's first token.
    for tab in (first, second):
        before = states_until_first_token(tab)
        assert any(s["thinking"] for s in before), f"no indicator before the first token: {before}"
    # Then the tokens grow in both tabs, in one bubble with the Stop button under it.
    for n in (3, 8):
        for tab in (first, second):
            expect(tab.locator(".sb-stream-text")).to_contain_text(counted_to(text, n))
    for tab in (first, second):
        expect(tab.locator(MESSAGES)).to_have_text([ANYTHING, text])  # the user's, drawn
        expect(tab.locator(".sb-stream")).to_have_count(1)
        expect(tab.locator(".sb-stream .sb-stop")).to_be_visible()
    first.screenshot(path=str(SCREENSHOTS / "runs-real-streaming.png"))
    second.locator(".sb-stop").click()
    # Both tabs end with the partial reply and the stopped marker; history has it so.
    stored = slow_chat.stored_reply(session_id)
    assert stored["stopped"] is True, stored
    assert stored["content"].startswith(counted_to(text, 8)), stored
    assert not stored["content"].endswith(f" {SLOW_TOKENS}"), stored
    for tab in (first, second):
        expect(tab.locator(".sb-stream")).to_have_count(0)
        expect(tab.locator(".sb-run")).to_have_count(0)
        expect(tab.locator(".sb-stop")).to_have_count(0)
        expect(tab.locator(MESSAGES)).to_have_text(
            [ANYTHING, text, stopped_reply(stored["content"])]
        )
    second.screenshot(path=str(SCREENSHOTS / "runs-real-stopped.png"))
    # The runner closed its request to lfx, and lfx cancelled the run there: never finished.
    records = lfx_reply_ending(lfx_server, session_id)
    ended = [r["event"] for r in records[1:]]
    assert "finished" not in ended, records
    assert ended[:1] in ([], ["cancelled"], ["closed"]), records


@LFX_GROUP
def test_the_indicator_stays_until_the_first_token(
    context: BrowserContext, slow_chat: RunnerChat, session_id: str
) -> None:
    tab = open_chat(context, slow_chat.page, session_id, PAGE_LOAD_TIMEOUT_MS)
    tab.evaluate(WATCH_RUN)
    send_typed(tab, "are you thinking?")
    try:
        before = states_until_first_token(tab)
    finally:
        # End the run at once, whatever happened (slow_chat would go on for 10 s).
        tab.locator(".sb-stop").click()
        assert slow_chat.stored_reply(session_id)["stopped"] is True
    # From the moment the listener draws the reply's bubble to the first token, the bubble
    # says that the assistant is working: never an empty bubble.
    working = [s for s in before if s["bubble"]]
    assert working, before
    assert all(s["thinking"] for s in working), working


def test_langflow_unreachable_is_said_in_plain_words_and_the_message_stays(
    context: BrowserContext, tmp_path: Path, session_id: str
) -> None:
    closed_port = free_port()  # nothing listens there
    langflow_url = f"http://127.0.0.1:{closed_port}"
    with runner_chat(
        tmp_path,
        BRIDGE_LANGFLOW_URL=langflow_url,
        BRIDGE_FLOW="5b1e0c4e-7a52-4a8e-9d3c-0000000000a4",
        BRIDGE_LANGFLOW_API_KEY="key-for-nobody",
    ) as chat:
        tab = open_chat(context, chat.page, session_id, PAGE_LOAD_TIMEOUT_MS)
        text = "is anyone there?"
        send_typed(tab, text)
        note = tab.locator(".sb-error")
        expect(note).to_be_visible()
        expect(note).to_have_attribute("role", "alert")
        expect(note.locator(".sb-stream-text")).to_have_text(
            f"The assistant is unavailable: cannot reach Langflow at {langflow_url}"
        )
        # The user's message stays in the page; nothing works on, nothing was stored.
        expect(tab.locator(MESSAGES)).to_have_text([ANYTHING, text])
        expect(tab.locator(".sb-run")).to_have_count(0)
        expect(tab.locator(".sb-stop")).to_have_count(0)
        tab.screenshot(path=str(SCREENSHOTS / "runs-real-error.png"))
        assert chat.replies(session_id) == []
        # Still there after a rerun of the page draws the history again.
        expect(note).to_have_count(1)
        expect(tab.locator(MESSAGES).filter(has_text=text)).to_have_count(1)
