"""The chat page in a real Chromium against a real bridge and a real `streamlit run`.

One bridge (SQLite, so history survives its restart) and one Streamlit process serve the
whole module; each test uses its own session and its own browser context.
"""

from __future__ import annotations

import os
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import BrowserContext, Page, expect

from streamlit_client.client import BridgeClient
from streamlit_client.models import Template
from tests.browser_support import RunningPage, open_chat
from tests.support import ROOT, RunningBridge, free_port

StartBridge = Callable[..., RunningBridge]

pytest_plugins = ["tests.browser_support"]
pytestmark = pytest.mark.browser

README_SCREENSHOT = ROOT / "docs" / "screenshot.png"
MESSAGES = '[data-testid="stChatMessageContent"]'
ANYTHING = re.compile(r".*", re.S)


def shown(tab: Page) -> list[str]:
    return [text.strip() for text in tab.locator(MESSAGES).all_inner_texts()]


def expect_messages(tab: Page, wanted: list[str]) -> None:
    """Wait until the chat shows the welcome message, then exactly `wanted`, in order."""
    expect(tab.locator(MESSAGES)).to_have_text([ANYTHING, *wanted])


def test_without_a_session_the_page_creates_one_and_puts_it_in_the_url(
    context: BrowserContext,
    chat_page: RunningPage,
    api: BridgeClient,
) -> None:
    tab = context.new_page()
    tab.goto(chat_page.url)
    tab.wait_for_url(re.compile(r"[?&]session=[A-Za-z0-9_.:-]+"))
    session_id = re.search(r"session=([A-Za-z0-9_.:-]+)", tab.url).group(1)  # type: ignore[union-attr]
    expect(tab.locator('.sb-listener[data-status="open"]')).to_have_count(1)
    second = open_chat(context, chat_page, session_id)
    api.post_message(session_id, "ai", "shared by URL")
    for each in (tab, second):
        expect_messages(each, ["shared by URL"])


def test_a_post_appears(
    context: BrowserContext, chat_page: RunningPage, api: BridgeClient, session_id: str
) -> None:
    tab = open_chat(context, chat_page, session_id)
    api.post_message(session_id, "ai", "Hello from a POST")
    expect(tab.locator(MESSAGES).filter(has_text="Hello from a POST")).to_have_count(1)


def test_history_beyond_the_limit_is_collapsed(
    context: BrowserContext,
    chat_page: RunningPage,
    api: BridgeClient,
    session_id: str,
) -> None:
    for i in range(59):  # 60 with the welcome message; the default limit is 50
        api.post_message(session_id, "ai", f"old message {i}")
    tab = open_chat(context, chat_page, session_id)
    expect(tab.locator(MESSAGES)).to_have_count(50)
    expect(tab.locator(MESSAGES).first).to_have_text("old message 9")
    expander = tab.get_by_test_id("stExpander")
    expect(expander).to_contain_text("10 earlier messages")
    expander.get_by_text("10 earlier messages").click()
    expect(expander).to_contain_text("old message 8")


def test_a_burst_of_20_appears_complete_in_order_once(
    context: BrowserContext,
    chat_page: RunningPage,
    api: BridgeClient,
    session_id: str,
) -> None:
    tab = open_chat(context, chat_page, session_id)
    texts = [f"burst {i:02d} {uuid.uuid4().hex[:6]}" for i in range(20)]
    for text in texts:
        api.post_message(session_id, "ai", text)
    expect_messages(tab, texts)


def test_two_tabs_share_pushes_and_typed_messages(
    context: BrowserContext,
    chat_page: RunningPage,
    api: BridgeClient,
    session_id: str,
) -> None:
    first = open_chat(context, chat_page, session_id)
    second = open_chat(context, chat_page, session_id)
    api.post_message(session_id, "ai", "pushed to both")
    typed_first, typed_second = "typed in the first tab", "typed in the second tab"
    type_message(first, typed_first)
    expect_messages(second, ["pushed to both", typed_first])
    type_message(second, typed_second)
    for tab in (first, second):
        expect_messages(tab, ["pushed to both", typed_first, typed_second])
    users = [m.content for m in api.messages(session_id) if m.role == "user"]
    assert users == [typed_first, typed_second]
    listened = [api.listen(5, session_id=session_id) for _ in users]
    assert [heard.message.content for heard in listened if heard] == users


def type_message(tab: Page, text: str) -> None:
    box = tab.get_by_test_id("stChatInputTextArea")
    box.fill(text)
    box.press("Enter")
    expect(tab.locator(MESSAGES).filter(has_text=text)).to_have_count(1)


def test_a_stream_grows_then_ends_as_one_committed_message(
    context: BrowserContext,
    chat_page: RunningPage,
    api: BridgeClient,
    session_id: str,
) -> None:
    tab = open_chat(context, chat_page, session_id)
    words = [f"word{i}" for i in range(8)]
    shown_words = [threading.Event() for _ in words]
    failures: list[BaseException] = []

    def chunks() -> Iterator[str]:
        # Each chunk waits until the browser showed the previous one: the stream
        # provably passes through every intermediate length.
        for index, word in enumerate(words):
            yield word + " "
            if not shown_words[index].wait(10):
                return

    def stream() -> None:
        try:
            api.stream_reply(session_id, chunks())
        except BaseException as exc:  # reported in the main thread
            failures.append(exc)

    streamer = threading.Thread(target=stream)
    streamer.start()
    bubble = tab.locator(".sb-stream-text")
    lengths = []
    for index in range(len(words)):
        expect(bubble).to_have_text(" ".join(words[: index + 1]))
        lengths.append(len(bubble.inner_text()))
        shown_words[index].set()
    streamer.join(timeout=20)
    assert not failures, failures
    assert lengths == sorted(set(lengths)) and len(lengths) == len(words)
    final = " ".join(words)
    expect(tab.locator(".sb-stream")).to_have_count(0)
    expect(tab.locator(MESSAGES).filter(has_text=final)).to_have_count(1)
    expect_messages(tab, [final])


def test_the_page_reconnects_after_a_bridge_restart(
    context: BrowserContext,
    chat_page: RunningPage,
    api: BridgeClient,
    session_id: str,
    shared_bridge: RunningBridge,
) -> None:
    tab = open_chat(context, chat_page, session_id)
    api.post_message(session_id, "ai", "before the restart")
    expect(tab.locator(MESSAGES).filter(has_text="before the restart")).to_have_count(1)
    shared_bridge.stop()
    status = tab.locator(".sb-status")
    expect(status).to_be_visible()
    expect(status).to_contain_text("reconnecting")
    shared_bridge.start()
    api.post_message(session_id, "ai", "posted meanwhile")
    expect(tab.locator('.sb-listener[data-status="open"]')).to_have_count(1)
    expect(status).to_be_hidden()
    api.post_message(session_id, "ai", "after the reconnect")
    expect_messages(tab, ["before the restart", "posted meanwhile", "after the reconnect"])


def test_a_template_change_applies_without_a_reload(
    context: BrowserContext,
    chat_page: RunningPage,
    api: BridgeClient,
    session_id: str,
) -> None:
    tab = open_chat(context, chat_page, session_id)
    tab.evaluate("window.__sameDocument = true")
    api.post_message(session_id, "ai", "an answer")
    expect(tab.locator(MESSAGES).filter(has_text="an answer")).to_have_count(1)
    original = api.template()
    try:
        api.set_template(
            Template(
                welcome_msg="Welcome to the live template",
                input_msg="Ask the parrot",
                write_speed=0.0,
                ai_avatar="🦜",
                user_avatar="🐢",
            )
        )
        expect(tab.get_by_placeholder("Ask the parrot")).to_be_visible()
        expect(tab.locator(MESSAGES).first).to_have_text("Welcome to the live template")
        expect(tab.get_by_test_id("stChatMessage").first).to_contain_text("🦜")
        assert tab.evaluate("window.__sameDocument === true")
    finally:
        api.set_template(original)


def test_a_deleted_session_starts_again_in_the_open_tab(
    context: BrowserContext,
    chat_page: RunningPage,
    api: BridgeClient,
    session_id: str,
) -> None:
    tab = open_chat(context, chat_page, session_id)
    api.post_message(session_id, "ai", "from the old life")
    expect_messages(tab, ["from the old life"])
    api.delete_session(session_id)
    api.post_message(session_id, "ai", "from the new life")
    expect_messages(tab, ["from the new life"])


# Records every text a chat message containing "alpha" ever showed, from page load on.
TEXT_RECORDER = """
window.__texts = [];
new MutationObserver(() => {
  for (const el of document.querySelectorAll('[data-testid="stChatMessageContent"]')) {
    const text = el.innerText.trim();
    if (text.startsWith('alpha') && window.__texts.at(-1) !== text) window.__texts.push(text);
  }
}).observe(document, {childList: true, subtree: true, characterData: true});
"""


def test_write_speed_types_new_ai_messages_but_never_history(
    context: BrowserContext,
    chat_page: RunningPage,
    api: BridgeClient,
    session_id: str,
) -> None:
    context.add_init_script(TEXT_RECORDER)
    tab = open_chat(context, chat_page, session_id)
    original = api.template()
    full = "alpha beta gamma delta epsilon"
    try:
        api.set_template(original, write_speed=0.2, input_msg="Typing test")
        expect(tab.get_by_placeholder("Typing test")).to_be_visible()
        api.post_message(session_id, "ai", full)
        expect(tab.locator(MESSAGES).filter(has_text="alpha")).to_have_text(full)
        typed = tab.evaluate("window.__texts")
        assert len(typed) > 2 and typed[-1] == full and full.startswith(typed[0]), typed
        tab.reload()
        expect(tab.locator(MESSAGES).filter(has_text="alpha")).to_have_text(full)
        assert tab.evaluate("window.__texts") == [full]
    finally:
        api.set_template(original)


def test_screenshot_of_a_conversation(
    context: BrowserContext,
    chat_page: RunningPage,
    api: BridgeClient,
    session_id: str,
    tmp_path: Path,
) -> None:
    """A screenshot of a reply being streamed, written under the test's tmp_path.

    To refresh the picture in the README (docs/screenshot.png, tracked) on purpose, run
    `REFRESH_SCREENSHOT=1 .venv/bin/pytest tests/test_browser_chat.py -k screenshot`;
    a plain run never writes into the working tree.
    """
    refresh = os.environ.get("REFRESH_SCREENSHOT", "") == "1"
    screenshot = README_SCREENSHOT if refresh else tmp_path / "screenshot.png"
    tab = open_chat(context, chat_page, session_id)
    type_message(tab, "What does the bridge do?")
    api.stream_reply(
        session_id,
        iter(
            [
                "It pushes every message into each open tab ",
                "the moment it is posted, ",
                "and streams replies **as they are written**.",
            ]
        ),
    )
    expect(tab.locator(MESSAGES).filter(has_text="as they are written")).to_have_count(1)
    type_message(tab, "Show me a reply being streamed.")
    gate = threading.Event()

    def chunks() -> Iterator[str]:
        yield "### Here it comes\n\nChunk by chunk, **rendered as it grows**:\n\n"
        yield "1. the bridge relays each piece\n2. the page draws it as `markdown`\n"
        gate.wait(10)
        yield "3. once complete it is stored as one message."

    streamer = threading.Thread(target=api.stream_reply, args=(session_id, chunks()))
    streamer.start()
    try:
        stream_text = tab.locator(".sb-stream-text")
        expect(stream_text).to_contain_text("the page draws it as markdown")
        expect(stream_text.locator("strong")).to_have_text("rendered as it grows")
        png = tab.screenshot(path=str(screenshot))
    finally:
        gate.set()
        streamer.join(10)
    expect(tab.locator(MESSAGES).filter(has_text="stored as one message")).to_have_count(1)
    expect(tab.locator(".sb-stream")).to_have_count(0)
    assert png.startswith(b"\x89PNG") and screenshot.read_bytes() == png


def test_a_lost_history_is_reloaded_when_the_epoch_changes(
    start_bridge: StartBridge,
    context: BrowserContext,
    tmp_path: Path,
    session_id: str,
) -> None:
    """A `memory://` bridge restarted on the same port has a new epoch and no history."""
    port = free_port()
    bridge = start_bridge(env={"BRIDGE_ALLOWED_ORIGINS": f"http://127.0.0.1:{port}"})
    page = RunningPage(port=port, bridge_url=bridge.url, log_path=tmp_path / "page.log").start()
    try:
        with BridgeClient(bridge.url) as api:
            tab = open_chat(context, page, session_id)
            api.post_message(session_id, "ai", "soon forgotten")
            expect_messages(tab, ["soon forgotten"])
            bridge.restart()
            api.post_message(session_id, "ai", "the only one now")
            expect_messages(tab, ["the only one now"])
    finally:
        page.stop()


def test_a_failed_stream_is_taken_away(
    context: BrowserContext,
    chat_page: RunningPage,
    shared_bridge: RunningBridge,
    session_id: str,
) -> None:
    tab = open_chat(context, chat_page, session_id)
    first_shown = threading.Event()
    answers: list[httpx.Response] = []

    def body() -> Iterator[bytes]:
        yield b'{"delta": "half a reply"}\n'
        first_shown.wait(10)
        yield b"this line is not JSON\n"  # the bridge aborts the stream here

    def post() -> None:
        answers.append(
            httpx.post(
                f"{shared_bridge.url}/api/v1/sessions/{session_id}/messages/stream",
                content=body(),
                headers={"content-type": "application/x-ndjson"},
                timeout=20,
            )
        )

    poster = threading.Thread(target=post)
    poster.start()
    expect(tab.locator(".sb-stream-text")).to_have_text("half a reply")
    first_shown.set()
    poster.join(timeout=20)
    assert answers and answers[0].status_code == 422
    expect(tab.locator(".sb-stream")).to_have_count(0)
    expect(tab.get_by_text("A streamed reply stopped")).to_be_visible()
    expect_messages(tab, [])  # only the welcome: nothing was stored
