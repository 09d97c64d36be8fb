"""`listener.js` on its own, in a real Chromium against real bridges: it follows the close
codes of `bridge.wire` (stop where the table says stop, come back where it says come back)
and closes listeners that have left the page.

The page under test is a bare HTML page that loads `listener.js` as the module Streamlit
loads it and calls its default export as Streamlit does (`data`, `setStateValue`,
`parentElement`), served by a small HTTP server on an origin the bridges allow. The
browser's clock is Playwright's, so backoffs and the pruning delay pass at once
(`run_for`) and "never reconnects" is checked over a minute of page time, not waited for.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from bridge.wire import CLOSE_CODES, AfterClose, close_policy
from streamlit_client.client import BridgeClient
from tests.browser_support import launch_chromium
from tests.support import ROOT, RunningBridge, free_port, wait_until
from tests.test_client_close_codes import KEY, Bridges, running_bridges

pytestmark = pytest.mark.browser

PAGE_PORT = free_port()
ORIGIN = f"http://127.0.0.1:{PAGE_PORT}"
LISTENER_JS = (ROOT / "streamlit_client" / "listener.js").read_text(encoding="utf-8")
HARNESS = """<!doctype html><html><body><script type="module">
// Count every socket the page opens (the real WebSocket, counted).
window.sockets = 0;
const Real = window.WebSocket;
window.WebSocket = class extends Real {
  constructor(...args) { super(...args); window.sockets += 1; }
};
window.pushed = [];
const { default: mount } = await import("/listener.js");
// What Streamlit does for one st.components.v2 instance with key `key`.
window.mountListener = (key, data) => {
  let host = document.getElementById(key);
  if (!host) {
    host = document.createElement("div");
    host.id = key;
    document.body.append(host);
  }
  mount({
    data: { ...data, key },
    parentElement: host,
    setStateValue: (name, value) => window.pushed.push(value),
  });
};
window.harnessReady = true;
</script></body></html>"""
MINUTE_MS = 60_000


@pytest.fixture(scope="module")
def bridges(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bridges]:
    """An open bridge and one with an API key, both allowing the harness's origin."""
    tmp = tmp_path_factory.mktemp("listener")
    yield from running_bridges(tmp, BRIDGE_ALLOWED_ORIGINS=ORIGIN)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    expect.set_options(timeout=10_000)
    with sync_playwright() as playwright:
        chromium = launch_chromium(playwright)
        yield chromium
        chromium.close()


class _Harness(BaseHTTPRequestHandler):
    """`/listener.js` and, for any other path, the harness page."""

    def do_GET(self) -> None:
        if self.path == "/listener.js":
            body, kind = LISTENER_JS, "text/javascript"
        else:
            body, kind = HARNESS, "text/html"
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Type", f"{kind}; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet


@pytest.fixture(scope="module")
def harness() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", PAGE_PORT), _Harness)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield ORIGIN
    server.shutdown()
    server.server_close()
    thread.join(10)


@pytest.fixture
def tab(browser: Browser, harness: str) -> Iterator[Page]:
    context = browser.new_context()
    page = context.new_page()
    page.clock.install()
    page.goto(f"{harness}/")
    page.wait_for_function("window.harnessReady === true")
    yield page
    context.close()


def mount(tab: Page, key: str, bridge: RunningBridge, session_id: str, token: str | None) -> None:
    """Mount one listener as `streamlit_client.component.mount_listener` does."""
    data: dict[str, Any] = {
        "session_id": session_id,
        "ws_url": bridge.ws_url,
        "token": token,
        "have": 0,
        "ack_nonce": None,
        "resets": 0,
        "avatars": {},
        "close_policy": close_policy(),
    }
    tab.evaluate("([key, data]) => window.mountListener(key, data)", [key, data])


def status(tab: Page, key: str, state: str) -> Any:
    return tab.locator(f'#{key} .sb-listener[data-status="{state}"]')


def sockets(tab: Page) -> int:
    return int(tab.evaluate("window.sockets"))


def sid() -> str:
    return f"l-{uuid.uuid4().hex[:10]}"


# -- close codes ----------------------------------------------------------------------------

# 1009 is left out: the bridge sends it only to a client whose frame was too large, and the
# listener sends nothing but pings; browsers take frames of any size the bridge sends.
BROWSER_STOP_CODES = sorted(
    c.code for c in CLOSE_CODES.values() if c.then is AfterClose.STOP and c.code != 1009
)


@pytest.mark.parametrize("code", BROWSER_STOP_CODES)
def test_the_listener_stops_where_the_table_says_stop(
    code: int, tab: Page, bridges: Bridges
) -> None:
    session_id = sid()
    if code == 1007:  # an invalid session id
        mount(tab, "l", bridges.open, "not a valid id", None)
        shown = "invalid session id"
    elif code == 1008:  # a bridge with a key and a socket without a token
        mount(tab, "l", bridges.keyed, session_id, None)
        shown = "token"
    else:  # 4004: the session deleted under a socket opened with a token
        with BridgeClient(bridges.keyed.url, api_key=KEY) as api:
            api.create_session(session_id)
            mount(tab, "l", bridges.keyed, session_id, api.session_token(session_id))
            expect(status(tab, "l", "open")).to_have_count(1)
            api.delete_session(session_id)
        shown = "session deleted"
    expect(status(tab, "l", "stopped")).to_have_count(1)
    expect(tab.locator("#l .sb-status")).to_contain_text(shown)
    tab.clock.run_for(MINUTE_MS)  # every backoff would have fired many times over
    assert sockets(tab) == 1
    expect(status(tab, "l", "stopped")).to_have_count(1)


def test_the_listener_comes_back_after_a_restart(tab: Page, bridges: Bridges) -> None:
    # The control for the test above: a code whose rule is "resume" (1001, then refused
    # connections while the bridge starts) brings the same listener back.
    mount(tab, "l", bridges.open, sid(), None)
    expect(status(tab, "l", "open")).to_have_count(1)
    bridges.open.restart()
    expect(status(tab, "l", "reconnecting")).to_have_count(1)
    tab.clock.run_for(MINUTE_MS)
    expect(status(tab, "l", "open")).to_have_count(1)
    assert sockets(tab) >= 2


# -- pruning --------------------------------------------------------------------------------


def test_a_listener_that_left_the_page_is_closed_and_forgotten(
    tab: Page, bridges: Bridges
) -> None:
    gone, stays = sid(), sid()
    mount(tab, "gone", bridges.open, gone, None)
    mount(tab, "stays", bridges.open, stays, None)
    expect(status(tab, "gone", "open")).to_have_count(1)
    expect(status(tab, "stays", "open")).to_have_count(1)
    with BridgeClient(bridges.open.url) as api:

        def subscribers(session_id: str) -> int:
            return int(api.session_info(session_id)["subscribers"])

        wait_until(lambda: subscribers(gone) == subscribers(stays) == 1, 10, "both subscribed")
        tab.evaluate("document.getElementById('gone').remove()")  # Streamlit unmounted it
        tab.clock.run_for(MINUTE_MS)
        wait_until(lambda: subscribers(gone) == 0, 10, "the detached listener's socket closed")
        assert subscribers(stays) == 1
    keys = tab.evaluate("[...window.__streamlitBridgeListeners.keys()]")
    assert keys == ["stays"]
    assert sockets(tab) == 2  # nothing came back for the pruned one


def test_a_listener_moved_between_elements_is_kept(tab: Page, bridges: Bridges) -> None:
    # A rerun may mount the same key into a new element: the listener moves, not pruned.
    session_id = sid()
    mount(tab, "moved", bridges.open, session_id, None)
    expect(status(tab, "moved", "open")).to_have_count(1)
    tab.evaluate("document.getElementById('moved').id = 'old'")
    tab.evaluate("document.getElementById('old').remove()")
    tab.clock.run_for(5_000)  # less than the pruning delay
    mount(tab, "moved", bridges.open, session_id, None)
    tab.clock.run_for(MINUTE_MS)
    expect(status(tab, "moved", "open")).to_have_count(1)
    assert sockets(tab) == 1
