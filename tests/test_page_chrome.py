"""The page around the chat, in a real Chromium against a real bridge and `streamlit run`:
the title, "New chat", the sidebar's list of the chats this browser opened (kept in
localStorage) and the connection state.

Set `CHROME_SCREENSHOT_DIR` to keep the screenshots (`chrome-*.png`); by default they go
under the test's tmp_path.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, ViewportSize, expect

from streamlit_client.chats import (
    MAX_CHATS,
    NEW_CHAT,
    TITLE_CHARS,
    browser_chats,
    first_user_message,
    first_words,
    shown_url,
    title_of,
    valid_session_id,
)
from streamlit_client.client import BridgeClient
from streamlit_client.config import carries_prefix, new_session_id, user_prefix
from streamlit_client.launcher import chat_command
from tests import browser_support
from tests.browser_support import RunningPage, screenshot_folder
from tests.support import RunningBridge, free_port

StartBridge = Callable[..., RunningBridge]

pytest_plugins = ["tests.browser_support"]
browser_test = pytest.mark.browser

MESSAGES = '[data-testid="stChatMessageContent"]'
ITEMS = ".sb-chats-item"
CURRENT = ".sb-chats-current"
TIMEOUT_MS = 10_000
ANYTHING = re.compile(r".*", re.S)
HOSTILE = '<img src=x onerror="window.__pwned=1"> **bold** [link](javascript:alert(1)) `code`'


@pytest.fixture(scope="module")
def viewport_size() -> ViewportSize:
    # Each test's fresh context has its own localStorage, so its own list of chats.
    return {"width": 1200, "height": 800}


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    return screenshot_folder("CHROME_SCREENSHOT_DIR", tmp_path)


def session_of(tab: Page) -> str:
    values = parse_qs(urlsplit(tab.url).query).get("session") or []
    assert len(values) == 1, tab.url
    return values[0]


def wait_open(tab: Page) -> None:
    expect(tab.locator('.sb-listener[data-status="open"]')).to_have_count(1)


def open_page(context: BrowserContext, url: str) -> Page:
    tab = context.new_page()
    tab.goto(url)
    wait_open(tab)
    return tab


def type_message(tab: Page, text: str) -> None:
    box = tab.get_by_test_id("stChatInputTextArea")
    box.fill(text)
    box.press("Enter")
    expect(tab.locator(MESSAGES).filter(has_text=text.split()[0])).to_have_count(1)


def sidebar_items(tab: Page) -> list[str]:
    return [text.strip() for text in tab.locator(ITEMS).all_inner_texts()]


@browser_test
def test_new_chat_the_list_and_switching_back(
    context: BrowserContext, chat_page: RunningPage, api: BridgeClient, shots: Path
) -> None:
    tab = open_page(context, chat_page.url)
    tab.wait_for_url(re.compile(r"[?&]session="))
    first = session_of(tab)
    expect(tab.get_by_role("heading", name="Chat")).to_be_visible()
    sidebar = tab.get_by_test_id("stSidebar")
    expect(sidebar).to_be_visible()
    expect(tab.locator(".sb-chats-state")).to_have_text("Connected")
    expect(tab.locator(".sb-chats-url")).to_have_text(chat_page.bridge_url)
    # A chat without a user message is listed as a new chat, highlighted.
    expect(tab.locator(ITEMS)).to_have_text([NEW_CHAT])
    expect(tab.locator(CURRENT)).to_have_attribute("data-session", first)

    words = "Where is my parcel from last Tuesday, the one with the blue label on it?"
    type_message(tab, words)
    expect(tab.locator(CURRENT)).to_have_text(first_words(words))
    assert first_words(words).endswith("…") and len(first_words(words)) <= 40

    tab.get_by_role("button", name=NEW_CHAT).click()
    tab.wait_for_url(lambda url: f"session={first}" not in url)
    second = session_of(tab)
    assert second != first and re.fullmatch(r"[0-9a-f]{32}", second)
    wait_open(tab)
    expect(tab.locator(MESSAGES)).to_have_count(1)  # the welcome only
    expect(tab.locator(ITEMS)).to_have_text([NEW_CHAT, first_words(words)])
    expect(tab.locator(CURRENT)).to_have_attribute("data-session", second)
    # The new session exists in the bridge, seeded with the welcome.
    assert [m.role for m in api.messages(second)] == ["ai"]
    tab.screenshot(path=str(shots / "chrome-new-chat.png"))

    # Back to the first: its messages, without a page reload.
    tab.evaluate("window.__samePage = true")
    tab.locator(ITEMS).filter(has_text=first_words(words)).click()
    tab.wait_for_url(re.compile(rf"session={first}"))
    expect(tab.locator(MESSAGES)).to_have_text([ANYTHING, words])
    expect(tab.locator(CURRENT)).to_have_attribute("data-session", first)
    assert tab.evaluate("window.__samePage") is True
    wait_open(tab)
    api.post_message(first, "ai", "pushed after switching back")
    expect(tab.locator(MESSAGES).filter(has_text="pushed after switching back")).to_have_count(1)
    # Opened last: first in the list.
    expect(tab.locator(ITEMS)).to_have_text([first_words(words), NEW_CHAT])

    # The list is the browser's: it survives a reload, and a page without ?session=.
    tab.reload()
    wait_open(tab)
    expect(tab.locator(ITEMS)).to_have_text([first_words(words), NEW_CHAT])
    other = open_page(context, chat_page.url)
    other.wait_for_url(re.compile(r"[?&]session="))
    third = session_of(other)
    expect(other.locator(ITEMS)).to_have_text([NEW_CHAT, first_words(words), NEW_CHAT])
    expect(other.locator(CURRENT)).to_have_attribute("data-session", third)
    # The first tab hears of the third chat through the storage event.
    expect(tab.locator(ITEMS)).to_have_count(3)
    other.screenshot(path=str(shots / "chrome-three-chats.png"))


@browser_test
def test_content_and_ids_are_shown_as_text(
    context: BrowserContext, chat_page: RunningPage, api: BridgeClient, shots: Path
) -> None:
    marked = f"__init__:smile:_{uuid.uuid4().hex[:6]}_"  # markdown in a valid id
    api.post_message(marked, "user", HOSTILE)
    tab = open_page(context, chat_page.session_url(marked))
    expect(tab.locator(CURRENT)).to_have_text(first_words(HOSTILE))
    expect(tab.locator(".sb-chats-session")).to_have_text(marked)
    sidebar = tab.get_by_test_id("stSidebar")
    expect(sidebar.locator("img, a, strong, em, code")).to_have_count(0)
    assert tab.evaluate("window.__pwned") is None
    # Another chat with the same words, opened from the list.
    plain = f"t-{uuid.uuid4().hex[:12]}"
    tab.goto(chat_page.session_url(plain))
    wait_open(tab)
    expect(tab.locator(ITEMS)).to_have_text([NEW_CHAT, first_words(HOSTILE)])
    expect(sidebar.locator("img, a, strong, em, code")).to_have_count(0)
    tab.screenshot(path=str(shots / "chrome-hostile.png"))


@browser_test
def test_what_storage_holds_is_checked_before_it_is_shown(
    context: BrowserContext, chat_page: RunningPage, api: BridgeClient
) -> None:
    """Entries of localStorage are untrusted: bad ids are dropped, the list is bounded."""
    known = f"t-{uuid.uuid4().hex[:12]}"
    api.post_message(known, "user", "kept from an earlier visit")
    tab = open_page(context, chat_page.url)
    key = tab.evaluate(
        "Object.keys(localStorage).find((k) => k.startsWith('streamlit-bridge.chats:'))"
    )
    assert key, "the list is kept in localStorage"
    entries = [
        {"id": "<b>x</b>", "at": 9e15},
        {"id": "../etc/passwd", "at": 9e15},
        {"id": known, "at": 2},
        *({"id": f"t-filler-{i}", "at": 1} for i in range(MAX_CHATS + 10)),
        "not an object",
    ]
    tab.evaluate("([k, v]) => localStorage.setItem(k, JSON.stringify(v))", [key, entries])
    tab.reload()
    wait_open(tab)
    expect(tab.locator(ITEMS)).to_have_count(MAX_CHATS)
    texts = sidebar_items(tab)
    assert texts[:2] == [NEW_CHAT, "kept from an earlier visit"], texts
    sessions = tab.locator(ITEMS).evaluate_all("(items) => items.map((i) => i.dataset.session)")
    assert "<b>x</b>" not in sessions and "../etc/passwd" not in sessions


@browser_test
def test_an_embedded_chat_without_title_or_sidebar(
    context: BrowserContext,
    shared_bridge: RunningBridge,
    tmp_path: Path,
) -> None:
    script = tmp_path / "embedded.py"
    script.write_text(
        "import streamlit as st\n"
        "from streamlit_client import chat\n"
        "st.header('My own app')\n"
        "chat(title=None, sidebar=False)\n"
    )
    port = free_port()
    page = RunningPage(
        port=port, bridge_url=shared_bridge.url, log_path=tmp_path / "streamlit.log", script=script
    )
    # This page's origin is not among the bridge's allowed ones: the socket is refused,
    # which is beside the point here (nothing of the chrome is drawn either way).
    page.start()
    try:
        tab = context.new_page()
        tab.goto(page.url)
        tab.wait_for_url(re.compile(r"[?&]session="))
        expect(tab.get_by_role("heading", name="My own app")).to_be_visible()
        expect(tab.locator(MESSAGES)).to_have_count(1)
        expect(tab.get_by_role("heading", name="Chat")).to_have_count(0)
        expect(tab.get_by_test_id("stSidebar")).to_have_count(0)
        expect(tab.locator(".sb-chats")).to_have_count(0)
    finally:
        page.stop()


@browser_test
def test_the_connection_state_follows_the_bridge(
    context: BrowserContext, chat_page: RunningPage, shared_bridge: RunningBridge
) -> None:
    tab = open_page(context, chat_page.session_url(f"t-{uuid.uuid4().hex[:12]}"))
    state = tab.locator(".sb-chats-state")
    expect(state).to_have_text("Connected")
    expect(state).to_have_attribute("data-state", "ok")
    shared_bridge.stop()
    try:
        expect(state).not_to_have_attribute("data-state", "ok")
    finally:
        shared_bridge.start()
    expect(state).to_have_attribute("data-state", "ok")


@browser_test
def test_the_sidebar_follows_the_dark_theme(
    browser: Browser,
    shared_bridge: RunningBridge,
    api: BridgeClient,
    shots: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The page runs with --theme.base light; a second flag, later, wins.
    def dark(port: int, **kwargs: Any) -> list[str]:
        return [*chat_command(port, **kwargs), "--theme.base", "dark"]

    monkeypatch.setattr(browser_support, "chat_command", dark)
    port = free_port()
    page = RunningPage(
        port=port, bridge_url=shared_bridge.url, log_path=tmp_path / "dark.log"
    ).start()
    ctx = browser.new_context(viewport={"width": 1200, "height": 800})
    ctx.set_default_timeout(TIMEOUT_MS)
    try:
        session = f"t-{uuid.uuid4().hex[:12]}"
        api.post_message(session, "user", "How dark is the dark theme?")
        tab = ctx.new_page()
        tab.goto(page.session_url(session))  # its origin is not allowed: no socket
        current = tab.locator(CURRENT)
        expect(current).to_have_text("How dark is the dark theme?")
        colour = "(el) => getComputedStyle(el).color.match(/\\d+/g).slice(0, 3).map(Number)"
        tab.screenshot(path=str(shots / "chrome-dark.png"))
        assert min(current.evaluate(colour)) > 150, "light text on the dark sidebar"
    finally:
        ctx.close()
        page.stop()


@browser_test
def test_a_bound_page_lists_only_the_signed_in_users_chats(
    start_bridge: StartBridge, browser: Browser, tmp_path: Path
) -> None:
    """One browser (one localStorage), two users in turn behind a proxy: each sees only
    their own chats in the list, never the other's first words."""
    key, header = "chrome-test-key-" + "k" * 24, "X-Forwarded-User"
    port = free_port()
    bridge = start_bridge(
        env={"BRIDGE_API_KEY": key, "BRIDGE_ALLOWED_ORIGINS": f"http://127.0.0.1:{port}"}
    )
    page = RunningPage(
        port=port,
        bridge_url=bridge.url,
        log_path=tmp_path / "bound.log",
        extra_env={
            "BRIDGE_API_KEY": key,
            "BRIDGE_CHAT_BIND_USER": "1",
            "BRIDGE_CHAT_USER_HEADER": header,
        },
    ).start()
    ctx = browser.new_context(
        viewport={"width": 1200, "height": 800}, extra_http_headers={header: "alice@example.com"}
    )
    ctx.set_default_timeout(TIMEOUT_MS)
    try:
        tab = open_page(ctx, page.url)
        tab.wait_for_url(re.compile(r"[?&]session="))
        alice_sid = session_of(tab)
        assert carries_prefix(alice_sid, user_prefix(key, "alice@example.com"))
        type_message(tab, "alice's secret plans")
        expect(tab.locator(CURRENT)).to_have_text("alice's secret plans")
        tab.get_by_role("button", name=NEW_CHAT).click()
        tab.wait_for_url(lambda url: alice_sid not in url)
        expect(tab.locator(ITEMS)).to_have_text([NEW_CHAT, "alice's secret plans"])

        ctx.set_extra_http_headers({header: "bob@example.com"})
        tab.goto(page.url)
        wait_open(tab)
        bob_sid = session_of(tab)
        assert carries_prefix(bob_sid, user_prefix(key, "bob@example.com"))
        expect(tab.locator(ITEMS)).to_have_text([NEW_CHAT])
        expect(tab.locator(CURRENT)).to_have_attribute("data-session", bob_sid)
        assert "secret plans" not in tab.content()
        # Alice's chats are still in this browser's list, for when she is back.
        stored = tab.evaluate(
            "Object.entries(localStorage).filter(([k]) => k.startsWith('streamlit-bridge.chats:'))"
            ".map(([, v]) => v).join()"
        )
        assert alice_sid in stored

        ctx.set_extra_http_headers({header: "alice@example.com"})
        tab.goto(page.url)
        wait_open(tab)
        expect(tab.locator(ITEMS).filter(has_text="alice's secret plans")).to_have_count(1)
        expect(tab.locator(f'{ITEMS}[data-session="{bob_sid}"]')).to_have_count(0)
    finally:
        ctx.close()
        page.stop()


# -- without a browser ----------------------------------------------------------------------


def test_first_words_are_one_line_cut_at_a_word() -> None:
    assert first_words("  Hello\n\n  world \t ") == "Hello world"
    long = "word " * 30
    cut = first_words(long)
    assert len(cut) <= TITLE_CHARS and cut.endswith("…") and not cut.endswith(" …")
    assert first_words("x" * 100).startswith("x" * (TITLE_CHARS - 1))
    assert title_of({"role": "user", "type": "image", "content": "data:image/png;base64,AA"}) == (
        "Image"
    )
    assert title_of({"role": "user", "content": "   "}) is None
    assert title_of(None) is None


def test_the_first_user_message_is_read_from_a_stream_in_pieces() -> None:
    messages = [
        {"seq": 1, "role": "ai", "content": "welcome, [user]"},
        {"seq": 2, "role": "user", "content": 'the "first" ] one'},
        {"seq": 3, "role": "user", "content": "second"},
    ]
    text = json.dumps(messages, indent=1)
    pieces = [text[i : i + 3] for i in range(0, len(text), 3)]
    consumed: list[str] = []

    def feed() -> Iterator[str]:
        for piece in pieces:
            consumed.append(piece)
            yield piece

    found = first_user_message(feed())
    assert found is not None and found["content"] == 'the "first" ] one'
    assert len(consumed) < len(pieces)  # stopped reading after it
    assert first_user_message(iter(["[", "]"])) is None
    assert first_user_message(iter(["[]"])) is None
    assert first_user_message(iter(['{"detail": "no"}'])) is None
    # Past the budget it gives up rather than read a huge history.
    huge = json.dumps([{"role": "ai", "content": "x" * 1000}] * 50 + [{"role": "user"}])
    assert (
        first_user_message(iter([huge[i : i + 100] for i in range(0, len(huge), 100)]), 5000)
        is None
    )


def test_the_browsers_list_is_checked() -> None:
    value = [
        {"id": "old", "at": 1},
        {"id": "new", "at": 3},
        {"id": "old", "at": 5},  # repeated: its newest time counts
        {"id": "<b>x</b>", "at": 9},
        {"id": "..", "at": 9},
        {"id": "a" * 129, "at": 9},
        {"id": "nan", "at": float("nan")},
        {"id": "flag", "at": True},
        "junk",
        None,
    ]
    assert browser_chats(value) == ["old", "new", "nan", "flag"]
    assert browser_chats({"id": "x"}) == []
    assert browser_chats([{"id": f"s{i}", "at": i} for i in range(100)]) == [
        f"s{i}" for i in range(99, 99 - MAX_CHATS, -1)
    ]
    prefix = user_prefix("key", "alice")
    mine = new_session_id(prefix)
    theirs = new_session_id(user_prefix("key", "bob"))
    assert browser_chats([{"id": mine, "at": 1}, {"id": theirs, "at": 2}], prefix) == [mine]
    assert valid_session_id("a:b_c-d.e") and not valid_session_id("a b")


def test_the_shown_url_carries_no_credentials() -> None:
    assert shown_url("https://user:secret@bridge.example:8443/x?token=t#f") == (
        "https://bridge.example:8443/x"
    )
    assert shown_url("http://[::1]:7881") == "http://[::1]:7881"
    assert shown_url("http://127.0.0.1:7881") == "http://127.0.0.1:7881"
