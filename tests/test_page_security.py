"""The chat page's own defences (issue 10, items 3 and 7), in a real Chromium against real
bridges and real `streamlit run` processes, plus the pure functions behind them.

- Item 3: an `image` message naming a local file (as an older bridge stored it) is shown
  as text with a note, never handed to `st.image`, which would open the file.
- Item 7: with `BRIDGE_CHAT_BIND_USER`, the page creates session ids carrying the signed-in
  user's prefix and refuses every other id: no token, no socket, no bridge call.
"""

from __future__ import annotations

import base64
import re
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright

from bridge.models import check_session_id
from streamlit_client.client import BridgeClient, BridgeHTTPError
from streamlit_client.config import (
    ChatConfig,
    carries_prefix,
    new_session_id,
    parse_flag,
    user_prefix,
)
from streamlit_client.launcher import chat_env
from tests.browser_support import RunningPage, launch_chromium
from tests.support import RunningBridge, free_port, wait_until

StartBridge = Callable[..., RunningBridge]

MESSAGES = '[data-testid="stChatMessageContent"]'
LISTENER_OPEN = '.sb-listener[data-status="open"]'
RUN_DONE = '[data-testid="stApp"][data-test-script-state="notRunning"]'
TIMEOUT_MS = 15_000
API_KEY = "page-security-test-key-" + "k" * 24
USER_HEADER = "X-Forwarded-User"
SESSION_IN_URL = re.compile(r"[?&]session=([A-Za-z0-9_.:-]+)")
IMAGE_NOTE = "image not shown: only http(s) and data:image URLs are displayed"
# A 1x1 PNG: a valid data:image URI, still drawn as an image.
PNG = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"
    "YPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)


# -- pure functions --------------------------------------------------------------------


def test_only_http_urls_and_data_image_uris_may_reach_st_image(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Imported here so that the browser tests below also run against an older render.py.
    from streamlit_client.render import IMAGE_REFUSED_NOTE, displayable_image

    assert IMAGE_REFUSED_NOTE == IMAGE_NOTE
    svg = tmp_path / "local.svg"
    svg.write_text("<svg></svg>")
    assert displayable_image("https://example.com/cat.png") == "https://example.com/cat.png"
    assert displayable_image("http://example.com/a?b=c") == "http://example.com/a?b=c"
    assert displayable_image(PNG) == PNG
    for refused in (
        str(svg),
        "/dev/zero",
        "/etc/passwd",
        "local.png",
        f"file://{svg}",
        "ftp://x/y.png",
        "data:image/svg+xml;base64,PHN2Zz48L3N2Zz4=",
        "data:text/html;base64,PGI+",
        "https://example.com/a.png\n/etc/passwd",
        "",
    ):
        assert displayable_image(refused) is None, refused
    # Never a bytes or path object: Streamlit would read those too.
    assert displayable_image(svg) is None
    assert displayable_image(svg.read_bytes()) is None
    # Streamlit checks os.path.isfile before the scheme: a URL that also names a file
    # relative to the working directory would be opened, so it is refused.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "https:" / "host").mkdir(parents=True)
    (tmp_path / "https:" / "host" / "x.png").write_bytes(b"local")
    assert displayable_image("https://host/x.png") is None
    assert displayable_image("https://other/x.png") == "https://other/x.png"


def test_a_user_prefix_is_an_hmac_of_the_identity_under_the_key() -> None:
    alice = user_prefix("key-1", "alice@example.com")
    assert re.fullmatch(r"u-[0-9a-f]{16}", alice)
    assert alice == user_prefix("key-1", "alice@example.com")
    assert alice != user_prefix("key-1", "bob@example.com")
    assert alice != user_prefix("key-2", "alice@example.com")


def test_new_ids_are_random_valid_and_carry_only_their_own_prefix() -> None:
    alice, bob = user_prefix("k", "alice"), user_prefix("k", "bob")
    plain = new_session_id()
    assert re.fullmatch(r"[0-9a-f]{32}", plain) and uuid.UUID(plain).version == 4
    mine = new_session_id(alice)
    assert check_session_id(mine) == mine and len(mine) <= 128
    assert uuid.UUID(mine.rsplit("-", 1)[1]).version == 4  # 122 random bits after the prefix
    assert new_session_id(alice) != mine
    assert carries_prefix(mine, alice) and not carries_prefix(mine, bob)
    for other in (
        plain,
        alice,
        alice + "-",
        alice + "x",
        "x" + mine,
        mine.upper(),
        bob + mine[len(alice) :],
        "ü-" + mine,
        "",
    ):
        assert not carries_prefix(other, alice), other


def test_binding_settings_come_from_the_environment_and_reach_the_page() -> None:
    config = ChatConfig.from_env(
        {
            "BRIDGE_CHAT_BIND_USER": "yes",
            "BRIDGE_CHAT_USER_HEADER": " X-Forwarded-User ",
            "BRIDGE_API_KEY": "k",
        }
    )
    assert (config.bind_user, config.user_header, config.user_claim) == (
        True,
        "X-Forwarded-User",
        "email",
    )
    again = ChatConfig.from_env(config.to_env())
    assert (again.bind_user, again.user_header, again.user_claim) == (
        True,
        "X-Forwarded-User",
        "email",
    )
    assert ChatConfig.from_env({}).bind_user is False
    assert ChatConfig.from_env({"BRIDGE_CHAT_USER_CLAIM": "sub"}).user_claim == "sub"
    with pytest.raises(ValueError, match="BRIDGE_CHAT_BIND_USER"):
        ChatConfig.from_env({"BRIDGE_CHAT_BIND_USER": "ture"})
    assert parse_flag("X", "On") is True and parse_flag("X", None) is False
    base = {"BRIDGE_CHAT_BIND_USER": "1", "BRIDGE_CHAT_USER_HEADER": "X-User"}
    assert chat_env("http://b:1", base=base)["BRIDGE_CHAT_BIND_USER"] == "1"
    assert chat_env("http://b:1", base=base)["BRIDGE_CHAT_USER_HEADER"] == "X-User"
    assert "BRIDGE_CHAT_BIND_USER" not in chat_env("http://b:1", bind_user=False, base=base)
    assert chat_env("http://b:1", bind_user=True, base={})["BRIDGE_CHAT_BIND_USER"] == "1"


# -- in the browser --------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as playwright:
        chromium = launch_chromium(playwright)
        yield chromium
        chromium.close()


def new_context(browser: Browser, user: str | None = None) -> BrowserContext:
    """A browser context whose every request carries `X-Forwarded-User: user`, as an
    authenticating proxy in front of the page would add it."""
    headers = {USER_HEADER: user} if user else {}
    context = browser.new_context(
        viewport={"width": 1000, "height": 700}, extra_http_headers=headers
    )
    context.set_default_timeout(TIMEOUT_MS)
    return context


def start_page(tmp: Path, bridge_url: str, port: int, name: str, **env: str) -> RunningPage:
    return RunningPage(
        port=port, bridge_url=bridge_url, log_path=tmp / f"{name}.log", extra_env=env
    ).start()


def insert_stored_message(db: Path, session_id: str, content: str, type_: str) -> None:
    """Write a message into a stopped bridge's SQLite file the way an older bridge, which
    did not check image content, would have stored it."""
    with closing(sqlite3.connect(db)) as conn, conn:
        (seq,) = conn.execute(
            "SELECT COALESCE(MAX(seq), 0) + 1 FROM messages WHERE session_id = ?",
            (session_id,),
        ).fetchone()
        conn.execute(
            "INSERT INTO messages (session_id, seq, id, role, content, type, created_at, key)"
            " VALUES (?, ?, ?, 'ai', ?, ?, ?, NULL)",
            (session_id, seq, uuid.uuid4().hex, content, type_, time.time()),
        )


def decoded_data_uris(tab: Page) -> list[str]:
    """The text inside every data: URI an <img> of the page shows."""
    texts = []
    for src in tab.eval_on_selector_all("img", "els => els.map(e => e.src)"):
        if src.startswith("data:") and ";base64," in src:
            raw = base64.b64decode(src.split(";base64,", 1)[1])
            texts.append(raw.decode("utf-8", "replace"))
    return texts


@pytest.mark.browser
def test_an_image_message_naming_a_local_file_is_shown_as_text_never_opened(
    start_bridge: StartBridge,
    browser: Browser,
    tmp_path: Path,
) -> None:
    marker = f"LOCAL-FILE-{uuid.uuid4().hex}"
    local = tmp_path / "on-the-page-host.svg"
    local.write_text(
        '<svg xmlns="http://www.w3.org/2000/svg" width="200" height="40">'
        f'<text x="0" y="20">{marker}</text></svg>'
    )
    assert marker not in str(local)
    port = free_port()
    bridge = start_bridge(
        store="sqlite", env={"BRIDGE_ALLOWED_ORIGINS": f"http://127.0.0.1:{port}"}
    )
    session_id = f"img-{uuid.uuid4().hex[:12]}"
    with BridgeClient(bridge.url) as api:
        api.create_session(session_id)
        # Today's bridge refuses the path: it can only come from history written before.
        with pytest.raises(BridgeHTTPError):
            api.post_message(session_id, "ai", str(local), type="image")
    bridge.stop()
    insert_stored_message(tmp_path / "bridge.db", session_id, str(local), "image")
    bridge.start()
    with BridgeClient(bridge.url) as api:
        assert [m.content for m in api.messages(session_id)][-1] == str(local)
        api.post_message(session_id, "ai", PNG, type="image")
        api.post_message(session_id, "ai", "after the images")
    page = start_page(tmp_path, bridge.url, port, "page")
    context = new_context(browser)
    try:
        tab = context.new_page()
        tab.goto(page.session_url(session_id))
        expect(tab.locator(LISTENER_OPEN)).to_have_count(1)
        expect(tab.locator(MESSAGES).last).to_have_text("after the images")
        expect(tab.locator(RUN_DONE)).to_have_count(1)
        # Not as text, nor inside an image's data URI (how Streamlit inlines an SVG file).
        assert marker not in tab.content()
        assert not [text for text in decoded_data_uris(tab) if marker in text]
        bubble = tab.locator(MESSAGES).filter(has_text=IMAGE_NOTE)
        expect(bubble).to_have_count(1)
        expect(bubble).to_contain_text(str(local))  # as plain text
        expect(bubble.locator("img")).to_have_count(0)
        # A data:image URI the bridge accepts is still drawn.
        expect(tab.locator(f'[data-testid="stImage"] img[src="{PNG}"]')).to_have_count(1)
        bubble.scroll_into_view_if_needed()
        tab.screenshot(path=str(tmp_path / "image-note.png"))
    finally:
        context.close()
        page.stop()


@pytest.fixture
def keyed_bridge(start_bridge: StartBridge) -> Callable[..., RunningBridge]:
    def start(*ports: int) -> RunningBridge:
        origins = ",".join(f"http://127.0.0.1:{port}" for port in ports)
        return start_bridge(env={"BRIDGE_API_KEY": API_KEY, "BRIDGE_ALLOWED_ORIGINS": origins})

    return start


def new_chat(context: BrowserContext, page: RunningPage) -> tuple[Page, str]:
    """A tab on the page's root, once it created a session and opened its socket."""
    tab = context.new_page()
    tab.goto(page.url)
    tab.wait_for_url(SESSION_IN_URL)
    expect(tab.locator(LISTENER_OPEN)).to_have_count(1)
    found = SESSION_IN_URL.search(tab.url)
    assert found is not None
    return tab, found.group(1)


@pytest.mark.browser
def test_a_bound_page_keeps_each_user_to_their_own_sessions(
    keyed_bridge: Callable[..., RunningBridge],
    browser: Browser,
    tmp_path: Path,
) -> None:
    port = free_port()
    bridge = keyed_bridge(port)
    page = start_page(
        tmp_path,
        bridge.url,
        port,
        "bound",
        BRIDGE_API_KEY=API_KEY,
        BRIDGE_CHAT_BIND_USER="1",
        BRIDGE_CHAT_USER_HEADER=USER_HEADER,
    )
    alice, bob = new_context(browser, "alice@example.com"), new_context(browser, "bob@example.com")
    try:
        with BridgeClient(bridge.url, api_key=API_KEY) as api:
            bob_tab, bob_sid = new_chat(bob, page)
            assert carries_prefix(bob_sid, user_prefix(API_KEY, "bob@example.com"))
            _, alice_sid = new_chat(alice, page)
            assert carries_prefix(alice_sid, user_prefix(API_KEY, "alice@example.com"))
            api.post_message(bob_sid, "ai", "for bob only")
            expect(bob_tab.locator(MESSAGES).filter(has_text="for bob only")).to_have_count(1)
            assert api.session_info(bob_sid)["subscribers"] == 1

            # Alice has Bob's URL: refused before the page asks the bridge anything.
            tab = alice.new_page()
            tab.goto(page.session_url(bob_sid))
            expect(tab.get_by_text("This chat belongs to another user")).to_be_visible()
            expect(tab.locator(RUN_DONE)).to_have_count(1)
            expect(tab.locator(".sb-listener")).to_have_count(0)
            expect(tab.locator(MESSAGES)).to_have_count(0)
            assert "for bob only" not in tab.content()
            assert api.session_info(bob_sid)["subscribers"] == 1  # Bob's tab alone
            tab.screenshot(path=str(tmp_path / "refusal.png"))
            # An id never seen: not even created on the bridge.
            unseen = new_session_id(user_prefix(API_KEY, "bob@example.com"))
            tab.goto(page.session_url(unseen))
            expect(tab.get_by_text("This chat belongs to another user")).to_be_visible()
            expect(tab.locator(RUN_DONE)).to_have_count(1)
            with pytest.raises(BridgeHTTPError) as missing:
                api.session_info(unseen)
            assert missing.value.status == 404

            # The way out: a new chat of her own.
            tab.get_by_role("button", name="Start a new chat").click()
            expect(tab.locator(LISTENER_OPEN)).to_have_count(1)
            found = SESSION_IN_URL.search(tab.url)
            assert found is not None and found.group(1) not in (alice_sid, unseen)
            assert carries_prefix(found.group(1), user_prefix(API_KEY, "alice@example.com"))
    finally:
        alice.close()
        bob.close()
        page.stop()


@pytest.mark.browser
def test_a_bound_page_without_a_signed_in_user_asks_to_sign_in(
    keyed_bridge: Callable[..., RunningBridge],
    browser: Browser,
    tmp_path: Path,
) -> None:
    header_port, oidc_port = free_port(), free_port()
    bridge = keyed_bridge(header_port, oidc_port)
    behind_proxy = start_page(
        tmp_path,
        bridge.url,
        header_port,
        "proxy",
        BRIDGE_API_KEY=API_KEY,
        BRIDGE_CHAT_BIND_USER="1",
        BRIDGE_CHAT_USER_HEADER=USER_HEADER,
    )
    # st.user mode, and no [auth] section: nobody can be signed in.
    with_st_user = start_page(
        tmp_path,
        bridge.url,
        oidc_port,
        "st-user",
        BRIDGE_API_KEY=API_KEY,
        BRIDGE_CHAT_BIND_USER="1",
    )
    anonymous = new_context(browser)
    try:
        for page, detail in ((behind_proxy, USER_HEADER), (with_st_user, "no sign-in is")):
            tab = anonymous.new_page()
            tab.goto(page.url)
            expect(tab.get_by_text("Please sign in")).to_be_visible()
            expect(tab.get_by_text(detail)).to_be_visible()
            expect(tab.locator(RUN_DONE)).to_have_count(1)
            expect(tab.locator(".sb-listener")).to_have_count(0)
            assert "session=" not in tab.url
    finally:
        anonymous.close()
        behind_proxy.stop()
        with_st_user.stop()


@pytest.mark.browser
def test_without_binding_any_session_id_opens_as_before(
    keyed_bridge: Callable[..., RunningBridge],
    browser: Browser,
    tmp_path: Path,
) -> None:
    """A guard that binding stays opt-in (this passed before the change too)."""
    port = free_port()
    bridge = keyed_bridge(port)
    page = start_page(tmp_path, bridge.url, port, "unbound", BRIDGE_API_KEY=API_KEY)
    alice, bob = new_context(browser, "alice@example.com"), new_context(browser, "bob@example.com")
    try:
        _, bob_sid = new_chat(bob, page)
        assert re.fullmatch(r"[0-9a-f]{32}", bob_sid)
        with BridgeClient(bridge.url, api_key=API_KEY) as api:
            api.post_message(bob_sid, "ai", "anyone with the id reads this")
        tab = alice.new_page()
        tab.goto(page.session_url(bob_sid))
        expect(tab.locator(LISTENER_OPEN)).to_have_count(1)
        expect(tab.locator(MESSAGES).filter(has_text="anyone with the id")).to_have_count(1)
    finally:
        alice.close()
        bob.close()
        page.stop()


@pytest.mark.browser
def test_with_a_key_tabs_get_tokens_and_new_ones_when_theirs_expire(
    start_bridge: StartBridge,
    browser: Browser,
    tmp_path: Path,
) -> None:
    """The API-key path end to end: the page mints a token per tab, the bridge closes each
    socket when its token expires (1008), and the tab gets a new token and goes on."""
    port = free_port()
    ttl = 4
    bridge = start_bridge(
        env={
            "BRIDGE_API_KEY": API_KEY,
            "BRIDGE_ALLOWED_ORIGINS": f"http://127.0.0.1:{port}",
            "BRIDGE_TOKEN_TTL_S": str(ttl),
        }
    )
    page = start_page(tmp_path, bridge.url, port, "keyed", BRIDGE_API_KEY=API_KEY)
    context = new_context(browser)
    try:
        with BridgeClient(bridge.url, api_key=API_KEY) as api:
            first, session_id = new_chat(context, page)
            opened = time.monotonic()
            second = context.new_page()
            second.goto(page.session_url(session_id))
            expect(second.locator(LISTENER_OPEN)).to_have_count(1)
            wait_until(
                lambda: api.session_info(session_id)["subscribers"] == 2, 15, "two sockets"
            )
            api.post_message(session_id, "ai", "before expiry")
            for tab in (first, second):
                expect(tab.locator(MESSAGES).filter(has_text="before expiry")).to_have_count(1)
            # Both tokens are past their expiry: the bridge has closed both sockets.
            wait_until(lambda: time.monotonic() > opened + ttl + 2, ttl + 10, "token expiry")
            api.post_message(session_id, "ai", "after expiry")
            for tab in (first, second):
                expect(tab.locator(MESSAGES).filter(has_text="after expiry")).to_have_count(1)
                expect(tab.locator(LISTENER_OPEN)).to_have_count(1)
            # The bridge does enforce the key: what the tabs got, they got with tokens.
            with BridgeClient(bridge.url) as anonymous, pytest.raises(BridgeHTTPError) as no:
                anonymous.session_info(session_id)
            assert no.value.status == 401
    finally:
        context.close()
        page.stop()
