"""Replies that are working or streaming, in a real Chromium against a real bridge and a
real `streamlit run`: the Stop button, and the stopped marker in every tab.

The reply comes from a real producer: a thread POSTing an NDJSON reply to
`/api/v1/sessions/{id}/messages/stream` over its own socket, one chunk at a time, for as
long as it has chunks and the bridge has not answered (it watches its socket for the
answer between chunks, the way a well-behaved producer stops when its request is
answered). One bridge and one page serve the module; each test has its own session and
browser context, and opens two tabs of that session.

TODO(runner, issue 14): a test of the run indicator needs the runner (`serve
--langflow-url/--flow` against a real `lfx serve`), which is not in the bridge yet. Once
it is: type a message in one tab; both tabs show the working bubble (`.sb-run`, text
"Thinking…") before any token, the step line (`.sb-step`) while the flow calls a tool,
then the tokens in the same bubble, and nothing of the indicator once the reply is
stored; Stop during the indicator ends the run in both tabs; with lfx down, both tabs show
the error note (`.sb-error`, the bridge's reason) until the next message. Drive it with the
real runner, never with run.* frames made up by the test.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import select
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright

from streamlit_client.client import BridgeClient, session_path
from streamlit_client.render import STOPPED_MARKER
from tests.browser_support import RunningPage, launch_chromium
from tests.support import RunningBridge, bridge_env, free_port

pytestmark = pytest.mark.browser

MESSAGES = '[data-testid="stChatMessageContent"]'
TIMEOUT_MS = 10_000
ANYTHING = re.compile(r".*", re.S)
CHUNK_PACE_S = 0.1  # between chunks, unless the answer comes first
CHUNKS = [f"w{i:03d} " for i in range(300)]  # 30 s of reply at that pace: never all sent


@pytest.fixture(scope="module")
def page_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def shared_bridge(
    tmp_path_factory: pytest.TempPathFactory, page_port: int
) -> Iterator[RunningBridge]:
    tmp = tmp_path_factory.mktemp("bridge")
    running = RunningBridge(
        port=free_port(),
        store=f"sqlite:///{tmp / 'bridge.db'}",
        env=bridge_env(BRIDGE_ALLOWED_ORIGINS=f"http://127.0.0.1:{page_port}"),
        log_path=tmp / "bridge.log",
    )
    running.start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def chat_page(
    shared_bridge: RunningBridge, page_port: int, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningPage]:
    log = tmp_path_factory.mktemp("page") / "streamlit.log"
    page = RunningPage(port=page_port, bridge_url=shared_bridge.url, log_path=log).start()
    yield page
    page.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as playwright:
        chromium = launch_chromium(playwright)
        yield chromium
        chromium.close()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    ctx = browser.new_context(viewport={"width": 1000, "height": 800})
    ctx.set_default_timeout(TIMEOUT_MS)
    yield ctx
    ctx.close()


@pytest.fixture
def api(shared_bridge: RunningBridge) -> Iterator[BridgeClient]:
    with BridgeClient(shared_bridge.url) as client:
        yield client


@pytest.fixture
def session_id() -> str:
    return f"r-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    """Where the tests write their screenshots: `RUNS_SCREENSHOT_DIR`, else tmp_path."""
    folder = Path(os.environ.get("RUNS_SCREENSHOT_DIR") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


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


def open_chat(context: BrowserContext, chat_page: RunningPage, session_id: str) -> Page:
    """A tab on the session's page, once its WebSocket is open."""
    tab = context.new_page()
    tab.goto(chat_page.session_url(session_id))
    expect(tab.locator('.sb-listener[data-status="open"]')).to_have_count(1)
    return tab


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
