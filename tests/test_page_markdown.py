"""What the chat page draws itself, in a real Chromium against a real bridge and a real
`streamlit run` (issue 15): replies rendered as markdown while they stream, every pushed
message drawn the moment its frame arrives and replaced by Streamlit's element with no
second copy and no gap, the swap at `stream.end` without a jump, and untrusted content that
never executes, styles the page or links to `javascript:`.

One bridge (`memory://`, the template's typing effect off) and one page serve the module;
each test has its own session and browser context. A second page with Streamlit's dark
theme serves the theme test. Screenshots of a reply mid-stream, light and dark, go to
`MD_SCREENSHOT_DIR` (else the test's tmp_path) as `md-light.png` and `md-dark.png`.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, ViewportSize, expect

from streamlit_client.client import BridgeClient
from streamlit_client.launcher import chat_command, chat_env
from tests.browser_support import RunningPage, open_chat, screenshot_folder, start_page_bridge
from tests.support import ROOT, RunningBridge, free_port, wait_until

pytest_plugins = ["tests.browser_support"]
pytestmark = pytest.mark.browser

TIMEOUT_MS = 15_000
MESSAGES = '[data-testid="stChatMessageContent"]'
SWAP_JUMP_MAX_PX = 8.0
VENDOR = ROOT / "streamlit_client" / "vendor"

# A reply with every kind of block an LLM writes, in chunks cut at awkward places.
MARKDOWN_CHUNKS = [
    "## Plan for",
    " the week\n\nSome **bold",
    "** text, `inline code` and a [link](https://example.com/docs).\n\n",
    "- first item\n- second ",
    "item\n  - nested\n\n1. one\n2. two\n\n",
    "```python\ndef greet(name):\n",
    '    return f"hi {name}"\n```\n\n',
    "| tool | cost |\n|---|---:|\n| search | 1 |\n| fetch | 2 |\n\n",
    "> quoted advice\n\n",
    "Done.",
]
MARKDOWN_REPLY = "".join(MARKDOWN_CHUNKS)

# Each would set window.__xss (or open a dialog) if it ran.
XSS_PAYLOADS = [
    '<img src=x onerror="window.__xss=1">',
    "<script>window.__xss=2</script>",
    '<svg onload="window.__xss=3"><circle r="5"/></svg>',
    "[js link](javascript:window.__xss=4)",
    '<a href="javascript:window.__xss=5">raw js link</a>',
    "<style>body{display:none !important}</style>",
    '<iframe srcdoc="<script>parent.__xss=6</script>"></iframe>',
    "[data link](data:text/html;base64,PHNjcmlwdD5wYXJlbnQuX194c3M9Nzwvc2NyaXB0Pg==)",
    "![img](javascript:window.__xss=8)",
    '<details open ontoggle="window.__xss=9">x</details>',
    '[titled](https://example.com "t\\" onmouseover=\\"window.__xss=10")',
    "<javascript:window.__xss=11>",
    '<form action="javascript:window.__xss=12"><input autofocus onfocus="window.__xss=13"></form>',
    '<object data="javascript:window.__xss=14"></object>',
    "[entity link](javascript&#58;window.__xss=15) [case link](JaVaScRiPt:window.__xss=16)",
    "[ok link](https://example.com/safe)",
]
XSS_TEXT = "\n\n".join(XSS_PAYLOADS)

# Recorded from page load: every bubble of the listener, as drawn, and the XSS flag.
RECORD_BUBBLES = """
window.__bubbles = [];
new MutationObserver(() => {
  for (const node of document.querySelectorAll('.sb-bubble')) {
    const html = node.outerHTML;
    if (window.__bubbles.at(-1) !== html) window.__bubbles.push(html);
  }
}).observe(document, {childList: true, subtree: true, characterData: true, attributes: true});
"""

# For each marker in window.__watch: the number of visible copies of it (the listener's
# bubbles and Streamlit's chat messages), each time it changes, with which kind it was.
# Installed once the page is up: the listener's own observer, made before this one, is
# told of each change first, as it would be before the page is painted.
COUNT_COPIES = """() => {
window.__watch = [];
window.__copies = {};
const count = () => {
  for (const marker of window.__watch) {
    const ours = [...document.querySelectorAll('.sb-bubble')]
      .filter((n) => n.textContent.includes(marker) && n.checkVisibility()).length;
    const streamlit = [...document.querySelectorAll('[data-testid="stChatMessage"]')]
      .filter((n) => n.textContent.includes(marker) && n.checkVisibility()).length;
    const log = (window.__copies[marker] ||= []);
    const last = log.at(-1);
    if (!last || last.ours !== ours || last.streamlit !== streamlit) {
      log.push({ours, streamlit, at: Date.now()});
    }
  }
};
new MutationObserver(count).observe(document, {
  childList: true, subtree: true, characterData: true, attributes: true,
});
}"""

# The reply's box just before and just after the swap: the listener's bubble once the
# reply is complete (`stream.end` drawn, the moment Python is handed the message), and
# Streamlit's element the first time it shows the reply's text. Tops are measured from the
# first message of the chat, so that scrolling does not count. `displaced` is how far the
# bubble moved in between: Streamlit may draw st.chat_message's empty frame (avatar, no
# text) a moment before its content, above the bubble; that frame is Streamlit's own.
WATCH_SWAP = """() => {
window.__swap = {ours: null, streamlit: null, both: false, displaced: 0};
new MutationObserver(() => {
  const marker = window.__swapMarker;
  if (!marker || window.__swap.streamlit) return;
  const first = document.querySelector('[data-testid="stChatMessage"]');
  const origin = first ? first.getBoundingClientRect().top : 0;
  const box = (n) => {
    const r = n.getBoundingClientRect();
    return {top: r.top - origin, height: r.height};
  };
  const ours = [...document.querySelectorAll('.sb-bubble.sb-stream-done')]
    .find((n) => n.textContent.includes(marker) && n.checkVisibility());
  const streamlit = [...document.querySelectorAll('[data-testid="stChatMessage"]')]
    .find((n) => n.textContent.includes(marker) && n.checkVisibility());
  if (ours && streamlit) window.__swap.both = true;
  if (ours && !window.__swap.ours) window.__swap.ours = box(ours);
  if (ours) {
    const moved = Math.abs(box(ours).top - window.__swap.ours.top);
    window.__swap.displaced = Math.max(window.__swap.displaced, moved);
  }
  if (streamlit) window.__swap.streamlit = box(streamlit);
}).observe(document, {childList: true, subtree: true, characterData: true, attributes: true});
}"""


class DarkPage(RunningPage):
    """The chat page with Streamlit's dark theme (the launcher pins the light one)."""

    def start(self, timeout: float = 30.0) -> RunningPage:
        env = chat_env(self.bridge_url, browser_bridge_url=self.bridge_url, history_limit=50)
        command = chat_command(self.port, page=self.script)
        command[command.index("--theme.base") + 1] = "dark"
        with self.log_path.open("ab") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=log)
        wait_until(self._healthy, timeout, f"streamlit on port {self.port} ({self.log_path})")
        return self


@pytest.fixture(scope="module")
def dark_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def shared_bridge(
    tmp_path_factory: pytest.TempPathFactory, page_port: int, dark_port: int
) -> Iterator[RunningBridge]:
    with start_page_bridge(tmp_path_factory, page_port, dark_port, store="memory://") as running:
        with BridgeClient(running.url) as client:
            # Messages appear whole: the typing effect is a test of its own (test_browser_chat).
            client.set_template(client.template(), write_speed=0.0)
        yield running


@pytest.fixture(scope="module")
def browser_timeout_ms() -> int:
    return TIMEOUT_MS


@pytest.fixture(scope="module")
def viewport_size() -> ViewportSize:
    return {"width": 1000, "height": 900}


@pytest.fixture
def session_prefix() -> str:
    return "md-"


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    return screenshot_folder("MD_SCREENSHOT_DIR", tmp_path)


class GatedStream(threading.Thread):
    """Streams `chunks` as one reply; the last chunk waits for `release`, so the test sees
    the reply while it is still streaming (before `stream.end`)."""

    def __init__(self, api: BridgeClient, session_id: str, chunks: list[str]) -> None:
        super().__init__(daemon=True)
        self.api, self.session_id, self.chunks = api, session_id, chunks
        self.release = threading.Event()
        self.failure: BaseException | None = None

    def _chunks(self) -> Iterator[str]:
        yield from self.chunks[:-1]
        if not self.release.wait(20):
            raise TimeoutError("the test never released the last chunk")
        yield self.chunks[-1]

    def run(self) -> None:
        try:
            self.api.stream_reply(self.session_id, self._chunks())
        except BaseException as exc:  # reported by the test
            self.failure = exc

    def finish(self) -> None:
        self.release.set()
        self.join(20)
        assert not self.is_alive() and self.failure is None, self.failure


# -- the vendored files and the listener's source --------------------------------------


def test_the_vendored_files_are_the_ones_the_readme_names() -> None:
    readme = (VENDOR / "README.md").read_text(encoding="utf-8")
    named = dict(re.findall(r"`([\w.-]+)`\s*\|\s*`([0-9a-f]{64})`", readme))
    shipped = {p.name for p in VENDOR.iterdir() if p.name != "README.md"}
    assert set(named) == shipped, (named, shipped)
    for name, digest in named.items():
        assert hashlib.sha256((VENDOR / name).read_bytes()).hexdigest() == digest, name


def test_the_listener_neither_looks_up_nor_copies_streamlits_dom() -> None:
    source = (ROOT / "streamlit_client" / "listener.js").read_text(encoding="utf-8")
    for private in ("data-testid", "cloneNode", "stChatMessage"):
        assert private not in source, private
    # HTML reaches the page only through DOMPurify's fragment, never as a string.
    assert not re.search(r"\.(inner|outer)HTML\s*=|insertAdjacentHTML|document\.write", source)


# -- markdown while streaming ------------------------------------------------------------


def test_a_streamed_reply_is_markdown_while_it_streams(
    context: BrowserContext, chat_page: RunningPage, api: BridgeClient, session_id: str
) -> None:
    tab = open_chat(context, chat_page, session_id)
    stream = GatedStream(api, session_id, MARKDOWN_CHUNKS)
    stream.start()
    try:
        reply = tab.locator(".sb-stream:not(.sb-stream-done) .sb-stream-text")
        expect(reply).to_contain_text("quoted advice")
        expect(reply.locator("h2")).to_have_text("Plan for the week")
        expect(reply.locator("strong")).to_have_text("bold")
        expect(reply.locator("p > code")).to_have_text("inline code")
        link = reply.locator("a", has_text="link")
        expect(link).to_have_attribute("href", "https://example.com/docs")
        expect(link).to_have_attribute("target", "_blank")
        expect(link).to_have_attribute("rel", "noopener noreferrer")
        expect(reply.locator("ul > li")).to_have_count(3)
        expect(reply.locator("ul ul > li")).to_have_text(["nested"])
        expect(reply.locator("ol > li")).to_have_text(["one", "two"])
        expect(reply.locator("pre code")).to_have_text('def greet(name):\n    return f"hi {name}"')
        expect(reply.locator("table th")).to_have_text(["tool", "cost"])
        expect(reply.locator("table td")).to_have_text(["search", "1", "fetch", "2"])
        expect(reply.locator("blockquote")).to_have_text("quoted advice")
        assert "**" not in reply.inner_text() and "```" not in reply.inner_text()
        expect(tab.locator(MESSAGES).filter(has_text="Plan for the week")).to_have_count(0)
    finally:
        stream.finish()
    python = tab.locator(MESSAGES).filter(has_text="Plan for the week")
    expect(python).to_have_count(1)
    expect(python.locator("table td")).to_have_count(4)
    expect(tab.locator(".sb-bubble")).to_have_count(0)


def test_an_unclosed_code_fence_is_code_until_it_closes(
    context: BrowserContext, chat_page: RunningPage, api: BridgeClient, session_id: str
) -> None:
    tab = open_chat(context, chat_page, session_id)
    chunks = ["Here:\n\n```js\nconst a = 1;\n", "const b = **2**;\n", "```\n\nAfter the fence."]
    stream = GatedStream(api, session_id, chunks)
    stream.start()
    try:
        reply = tab.locator(".sb-stream-text")
        expect(reply.locator("pre code")).to_have_text("const a = 1;\nconst b = **2**;")
        expect(reply.locator("strong")).to_have_count(0)
        expect(reply.locator("p")).to_have_text(["Here:"])
    finally:
        stream.finish()
    python = tab.locator(MESSAGES).filter(has_text="After the fence.")
    expect(python.locator("code").filter(has_text="const b = **2**;")).to_have_count(1)


def test_the_swap_at_stream_end_does_not_move_the_reply(
    context: BrowserContext, chat_page: RunningPage, api: BridgeClient, session_id: str
) -> None:
    tab = open_chat(context, chat_page, session_id)
    tab.evaluate(WATCH_SWAP)
    # Streamlit highlights code asynchronously, loading each language the first time the
    # page draws it, with a shorter placeholder until then: that first time its element
    # grows by itself, swap or not. The question has some Python in it.
    api.post_message(session_id, "user", "Plan my week, please:\n\n```python\nweek = 1\n```")
    question = tab.locator(MESSAGES).filter(has_text="Plan my week")
    expect(question.locator("pre code .token").first).to_be_attached()  # highlighted
    tab.wait_for_timeout(300)
    tab.evaluate("window.__swapMarker = 'Plan for the week'")
    stream = GatedStream(api, session_id, MARKDOWN_CHUNKS)
    stream.start()
    expect(tab.locator(".sb-stream-text blockquote")).to_have_count(1)
    stream.finish()
    expect(tab.locator(MESSAGES).filter(has_text="Plan for the week")).to_have_count(1)
    expect(tab.locator(".sb-bubble")).to_have_count(0)
    swap = tab.evaluate("window.__swap")
    assert swap["ours"] and swap["streamlit"], swap
    assert not swap["both"], f"two copies visible at once: {swap}"
    jump = abs(swap["streamlit"]["top"] - swap["ours"]["top"])
    growth = abs(swap["streamlit"]["height"] - swap["ours"]["height"])
    print(
        f"swap at stream.end: top moved {jump:.1f} px, height changed {growth:.1f} px "
        f"(Streamlit's empty frame displaced the bubble by {swap['displaced']:.1f} px meanwhile)"
    )
    assert jump <= SWAP_JUMP_MAX_PX and growth <= SWAP_JUMP_MAX_PX, swap


# -- every pushed message at once, then Streamlit's, never two, never none ----------------


def test_every_pushed_message_shows_at_once_and_is_replaced_without_a_gap(
    context: BrowserContext, chat_page: RunningPage, api: BridgeClient, session_id: str
) -> None:
    tab = open_chat(context, chat_page, session_id)
    tab.evaluate(COUNT_COPIES)
    pushed = [f"{role} marker {uuid.uuid4().hex[:8]}" for role in ("ai", "user") * 3]
    typed = f"typed marker {uuid.uuid4().hex[:8]}"
    tab.evaluate("(markers) => window.__watch.push(...markers)", [*pushed, typed])
    for index, marker in enumerate(pushed):
        api.post_message(session_id, "ai" if index % 2 == 0 else "user", f"**{marker}** `md`")
    for marker in pushed:
        expect(tab.locator(MESSAGES).filter(has_text=marker)).to_have_count(1)
    expect(tab.locator(".sb-bubble")).to_have_count(0)
    tab.wait_for_timeout(300)  # anything after the bubbles went is recorded too
    pushes: dict[str, list[dict[str, int]]] = tab.evaluate("window.__copies")
    for marker in pushed:
        log = pushes[marker]
        shown = [i for i, entry in enumerate(log) if entry["ours"] + entry["streamlit"]]
        assert shown, (marker, log)
        # Exactly one copy from the first moment on: never two, never none.
        assert all(e["ours"] + e["streamlit"] == 1 for e in log[shown[0] :]), (marker, log)
        # The listener's bubble first, Streamlit's element in the end.
        assert log[shown[0]]["ours"] == 1 and log[-1]["streamlit"] == 1, (marker, log)

    # A typed message makes Streamlit run the whole page, which moves the pushed messages
    # from the live fragment into history (Streamlit draws them anew: the blank moment it
    # may show then is its own, not the listener's). Never two copies of anything.
    box = tab.get_by_test_id("stChatInputTextArea")
    box.fill(typed)
    box.press("Enter")
    expect(tab.locator(MESSAGES).filter(has_text=typed)).to_have_count(1)
    expect(tab.locator(".sb-bubble")).to_have_count(0)
    tab.wait_for_timeout(300)
    copies: dict[str, list[dict[str, int]]] = tab.evaluate("window.__copies")
    for marker in [*pushed, typed]:
        assert all(e["ours"] + e["streamlit"] <= 1 for e in copies[marker]), copies[marker]
        assert copies[marker][-1]["streamlit"] == 1, copies[marker]


# A 1x1 PNG: a valid image message.
PNG = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"
    "YPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)


def test_a_pushed_message_wears_the_templates_avatar(
    context: BrowserContext, chat_page: RunningPage, api: BridgeClient, session_id: str
) -> None:
    context.add_init_script(RECORD_BUBBLES)
    tab = open_chat(context, chat_page, session_id)
    api.post_message(session_id, "ai", "avatar check, default icon")
    expect(tab.locator(MESSAGES).filter(has_text="avatar check, default")).to_have_count(1)
    api.post_message(session_id, "ai", PNG, type="image")  # an image is drawn as one
    expect(tab.locator(f'[data-testid="stImage"] img[src="{PNG}"]')).to_have_count(1)
    images = [b for b in tab.evaluate("window.__bubbles") if 'class="sb-image"' in b]
    assert images and all(f'src="{PNG}"' in b for b in images), images
    original = api.template()
    try:
        api.set_template(original, ai_avatar="🦜", write_speed=0.0)
        expect(tab.get_by_test_id("stChatMessage").first).to_contain_text("🦜")
        api.post_message(session_id, "ai", "avatar check, parrot")
        expect(tab.locator(MESSAGES).filter(has_text="avatar check, parrot")).to_have_count(1)
    finally:
        api.set_template(original)
    bubbles = tab.evaluate("window.__bubbles")
    default = [b for b in bubbles if "avatar check, default" in b]
    parrot = [b for b in bubbles if "avatar check, parrot" in b]
    assert default and all("sb-avatar-icon" in b and "<svg" in b for b in default), default
    assert parrot and all(re.search(r'sb-avatar-text"[^>]*>🦜<', b) for b in parrot), parrot


# -- untrusted content --------------------------------------------------------------------

FORBIDDEN_IN_PAGE = """() => {
  const found = [];
  for (const node of document.querySelectorAll('*')) {
    for (const attr of node.attributes) {
      if (attr.name.toLowerCase().startsWith('on')) found.push(`${node.tagName} ${attr.name}`);
    }
  }
  // javascript: links nowhere; data: links not in the listener's bubbles (st.markdown keeps
  // them in Streamlit's element: browsers refuse to open a data: URL as a page).
  for (const a of document.querySelectorAll('a[href]')) {
    const href = a.getAttribute('href').trim().toLowerCase();
    if (href.startsWith('javascript:')) found.push(`a ${href}`);
    if (href.startsWith('data:') && a.closest('.sb-bubble')) found.push(`a ${href}`);
  }
  for (const node of document.querySelectorAll('style, script, iframe, object, embed, form')) {
    if (/__xss|body\\{display:none/.test(node.textContent + node.outerHTML)) {
      found.push(node.outerHTML.slice(0, 80));
    }
  }
  for (const node of document.querySelectorAll('.sb-bubble *')) {
    if (node.hasAttribute('style')) found.push(`${node.tagName} style in a bubble`);
  }
  return found;
}"""
# What a bubble, as it was drawn, must not hold: parsed into an inert <template>.
UNCLEAN = """(html) => {
  const template = document.createElement('template');
  template.innerHTML = html;
  const found = [];
  for (const node of template.content.querySelectorAll('*')) {
    const tag = node.tagName.toLowerCase();
    if (['script', 'style', 'iframe', 'object', 'embed', 'form', 'input', 'link', 'meta',
         'base', 'math', 'details'].includes(tag)) found.push(tag);
    if (tag === 'svg' && !node.parentElement.classList.contains('sb-avatar')) found.push('svg');
    for (const attr of node.attributes) {
      const name = attr.name.toLowerCase();
      const value = attr.value.trim().toLowerCase();
      if (name.startsWith('on') || name === 'style' || name === 'srcdoc') {
        found.push(`${tag} ${name}`);
      }
      if (['href', 'src', 'action', 'data', 'xlink:href'].includes(name)
          && (value.startsWith('javascript:') || value.startsWith('data:text'))) {
        found.push(`${tag} ${name}=${value}`);
      }
    }
    if (tag === 'a' && node.hasAttribute('href')
        && !(node.target === '_blank' && node.rel === 'noopener noreferrer')) {
      found.push(`a without target/rel: ${node.outerHTML}`);
    }
  }
  return found;
}"""


def assert_nothing_ran(tab: Page, dialogs: list[str]) -> None:
    assert tab.evaluate("window.__xss") is None, "a payload ran"
    assert not dialogs, dialogs
    assert tab.evaluate(FORBIDDEN_IN_PAGE) == []
    # The page is still shown: no style from content reached it.
    assert tab.evaluate("getComputedStyle(document.body).display") != "none"
    expect(tab.get_by_test_id("stChatInput")).to_be_visible()


def assert_bubbles_clean(tab: Page, bubbles: list[str]) -> None:
    """Every state each bubble was drawn in: no tag, attribute or URL that could act."""
    assert bubbles
    for html in bubbles:
        assert tab.evaluate(UNCLEAN, html) == [], html


def click_every_text_link(tab: Page, scope: str) -> None:
    for text in ("js link", "raw js link", "data link", "entity link", "case link"):
        for link in tab.locator(scope).get_by_text(text, exact=True).all():
            # What a user's click does, without waiting for the page to hold still.
            link.dispatch_event("click")


def watch_dialogs(tab: Page) -> list[str]:
    dialogs: list[str] = []

    def on_dialog(dialog: Any) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    tab.on("dialog", on_dialog)
    return dialogs


def test_xss_payloads_in_a_stored_message_do_nothing(
    context: BrowserContext, chat_page: RunningPage, api: BridgeClient, session_id: str
) -> None:
    context.add_init_script(RECORD_BUBBLES)
    tab = open_chat(context, chat_page, session_id)
    dialogs = watch_dialogs(tab)
    for role in ("ai", "user"):
        api.post_message(session_id, role, f"{role} payloads\n\n{XSS_TEXT}")
        expect(tab.locator(MESSAGES).filter(has_text=f"{role} payloads")).to_have_count(1)
    expect(tab.locator(".sb-bubble")).to_have_count(0)
    bubbles = [b for b in tab.evaluate("window.__bubbles") if "payloads" in b]
    assert_bubbles_clean(tab, bubbles)
    assert any('href="https://example.com/safe"' in b for b in bubbles), bubbles
    # Raw HTML is shown as the text it is, as st.markdown shows it; javascript: links are text.
    assert any("&lt;script&gt;window.__xss=2&lt;/script&gt;" in b for b in bubbles), bubbles
    assert any("<a>js link</a>" in b for b in bubbles), bubbles
    click_every_text_link(tab, MESSAGES)
    tab.wait_for_timeout(300)
    assert_nothing_ran(tab, dialogs)


def test_xss_payloads_in_a_stream_do_nothing_while_it_streams(
    context: BrowserContext, chat_page: RunningPage, api: BridgeClient, session_id: str
) -> None:
    context.add_init_script(RECORD_BUBBLES)
    tab = open_chat(context, chat_page, session_id)
    dialogs = watch_dialogs(tab)
    # Cut into small pieces, so that every prefix of every payload is drawn once.
    pieces = [XSS_TEXT[i : i + 7] for i in range(0, len(XSS_TEXT), 7)]
    stream = GatedStream(api, session_id, ["streamed payloads\n\n", *pieces, "\n\nthe end"])
    stream.start()
    try:
        reply = tab.locator(".sb-stream-text")
        expect(reply).to_contain_text("ok link")
        expect(reply.locator('a[href="https://example.com/safe"]')).to_have_count(1)
        js_link = reply.locator("a", has_text="js link").first
        expect(js_link).not_to_have_attribute("href", re.compile(".*"))
        click_every_text_link(tab, ".sb-stream-text")
        tab.wait_for_timeout(300)
        assert_nothing_ran(tab, dialogs)
    finally:
        stream.finish()
    expect(tab.locator(MESSAGES).filter(has_text="streamed payloads")).to_have_count(1)
    expect(tab.locator(".sb-bubble")).to_have_count(0)
    assert_bubbles_clean(tab, [b for b in tab.evaluate("window.__bubbles") if "payloads" in b])
    click_every_text_link(tab, MESSAGES)
    tab.wait_for_timeout(300)
    assert_nothing_ran(tab, dialogs)


# -- the theme -----------------------------------------------------------------------------


def luminance(color: str) -> float:
    r, g, b = (float(x) for x in re.findall(r"[\d.]+", color)[:3])
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def screenshot_mid_stream(
    context: BrowserContext, page: RunningPage, api: BridgeClient, path: Path
) -> dict[str, str]:
    """A user's question and a markdown reply mid-stream; the colours the bubbles got."""
    session_id = f"md-{uuid.uuid4().hex[:12]}"
    tab = open_chat(context, page, session_id)
    question = "What is the plan for this week?"
    tab.get_by_test_id("stChatInputTextArea").fill(question)
    tab.get_by_test_id("stChatInputTextArea").press("Enter")
    expect(tab.locator(MESSAGES).filter(has_text=question)).to_have_count(1)
    stream = GatedStream(api, session_id, MARKDOWN_CHUNKS)
    stream.start()
    try:
        expect(tab.locator(".sb-stream-text blockquote")).to_have_count(1)
        tab.evaluate("document.querySelector('.sb-stream').scrollIntoView({block: 'end'})")
        tab.wait_for_timeout(200)
        tab.screenshot(path=str(path))
        colors: dict[str, str] = tab.evaluate(
            """() => {
              const text = document.querySelector('.sb-stream-text p');
              const app = document.querySelector('.stApp');
              const code = document.querySelector('.sb-stream-text pre');
              const avatar = document.querySelector('.sb-stream .sb-avatar');
              return {
                text: getComputedStyle(text).color,
                app: getComputedStyle(app).backgroundColor,
                code: getComputedStyle(code).backgroundColor,
                avatar: getComputedStyle(avatar).backgroundColor,
              };
            }"""
        )
    finally:
        stream.finish()
    return colors


def test_the_bubbles_follow_streamlits_light_and_dark_theme(
    browser: Browser,
    chat_page: RunningPage,
    shared_bridge: RunningBridge,
    dark_port: int,
    api: BridgeClient,
    screenshots: Path,
    tmp_path: Path,
) -> None:
    dark_page = DarkPage(
        port=dark_port, bridge_url=shared_bridge.url, log_path=tmp_path / "dark.log"
    )
    dark_page.start()
    try:
        found = {}
        for name, page in (("light", chat_page), ("dark", dark_page)):
            ctx = browser.new_context(viewport={"width": 1000, "height": 900})
            ctx.set_default_timeout(TIMEOUT_MS)
            try:
                found[name] = screenshot_mid_stream(ctx, page, api, screenshots / f"md-{name}.png")
            finally:
                ctx.close()
    finally:
        dark_page.stop()
    light, dark = found["light"], found["dark"]
    # The text contrasts with the app's background in both; the themes really differ.
    assert luminance(light["app"]) > 200 and luminance(light["text"]) < 100, light
    assert luminance(dark["app"]) < 60 and luminance(dark["text"]) > 180, dark
    assert light["code"] != dark["code"] and light["avatar"] != dark["avatar"], found
