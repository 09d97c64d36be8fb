"""Helpers for the browser tests and the browser benchmark: Chromium and real chat pages.

The page is the real `streamlit run` of `streamlit_client/page.py` (or any other script)
on a free port; Chromium is Debian's, driven by Playwright, never a downloaded build.

Fixtures (a test module using them adds `pytest_plugins = ["tests.browser_support"]`):

- `page_port` (module): a free port for the module's chat page.
- `shared_bridge` (module): a SQLite bridge allowing the page's origin (`start_page_bridge`).
- `chat_page` (module): the chat page on `page_port`, on `shared_bridge`.
- `browser` (module): Chromium; `expect` waits `browser_timeout_ms` (default `TIMEOUT_MS`).
- `context` (function): a fresh context of `viewport_size` (default 1000x800).
- `api` (function): a `BridgeClient` of `shared_bridge`.
- `session_id` (function): a new session id starting with `session_prefix` (default "t-").

A module overrides `browser_timeout_ms`, `viewport_size`, `session_prefix` or
`shared_bridge` by defining a fixture of that name.

Test modules import helpers from here and also list it in `pytest_plugins`; pytest may then
meet it already imported, so it is left as written (PYTEST_DONT_REWRITE), not assert-rewritten.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    Page,
    Playwright,
    ViewportSize,
    expect,
    sync_playwright,
)

from streamlit_client.client import BridgeClient
from streamlit_client.launcher import PAGE, chat_command, chat_env
from tests.support import ROOT, RunningBridge, bridge_env, free_port, stop_process, wait_until

__all__ = [
    "BROWSER_ARGS",
    "CHROMIUM",
    "OPEN",
    "TIMEOUT_MS",
    "RunningPage",
    "launch_chromium",
    "new_context",
    "open_chat",
    "screenshot_folder",
    "serving_page",
    "start_page_bridge",
]

CHROMIUM = "/usr/bin/chromium"
BROWSER_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TIMEOUT_MS = 10_000  # the browser tests' default wait
OPEN = '.sb-listener[data-status="open"]'  # the page's listener, its WebSocket open


def launch_chromium(playwright: Playwright) -> Browser:
    """Debian's Chromium, headless, with the flags CI needs."""
    return playwright.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)


@dataclass
class RunningPage:
    """A real Streamlit process serving a chat page on `port`."""

    port: int
    bridge_url: str
    log_path: Path
    script: Path = PAGE
    extra_env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def origin(self) -> str:
        """The page's origin as the browser sends it (the bridge must allow it)."""
        return self.url

    def session_url(self, session_id: str) -> str:
        return f"{self.url}/?session={session_id}"

    def start(self, timeout: float = 30.0) -> RunningPage:
        # Explicit, so that BRIDGE_* variables of the caller's shell cannot leak in.
        env = chat_env(self.bridge_url, browser_bridge_url=self.bridge_url, history_limit=50)
        env.update(self.extra_env)
        with self.log_path.open("ab") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                chat_command(self.port, page=self.script),
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=log,
            )
        wait_until(self._healthy, timeout, f"streamlit on port {self.port} ({self.log_path})")
        return self

    def _healthy(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(
                f"streamlit exited with {self.proc.returncode}:\n"
                f"{self.log_path.read_text()[-3000:]}"
            )
        try:
            return httpx.get(f"{self.url}/_stcore/health", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        stop_process(self.proc)


# -- helpers ---------------------------------------------------------------------------


@contextmanager
def start_page_bridge(
    tmp_path_factory: pytest.TempPathFactory, *page_ports: int, store: str | None = None
) -> Iterator[RunningBridge]:
    """A bridge allowing the pages on `page_ports` (SQLite in its own folder unless `store`
    says otherwise), stopped after."""
    tmp = tmp_path_factory.mktemp("bridge")
    origins = ",".join(f"http://127.0.0.1:{port}" for port in page_ports)
    running = RunningBridge(
        port=free_port(),
        store=store or f"sqlite:///{tmp / 'bridge.db'}",
        env=bridge_env(BRIDGE_ALLOWED_ORIGINS=origins),
        log_path=tmp / "bridge.log",
    )
    running.start()
    yield running
    running.stop()


@contextmanager
def serving_page(
    bridge: RunningBridge, port: int, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningPage]:
    """The chat page on `port`, on `bridge`, stopped after."""
    log = tmp_path_factory.mktemp("page") / "streamlit.log"
    page = RunningPage(port=port, bridge_url=bridge.url, log_path=log).start()
    yield page
    page.stop()


@contextmanager
def new_context(
    browser: Browser, width: int, height: int = 800, timeout_ms: int = TIMEOUT_MS
) -> Iterator[BrowserContext]:
    """A fresh browser context (its own localStorage) of that viewport, closed after."""
    ctx = browser.new_context(viewport={"width": width, "height": height})
    ctx.set_default_timeout(timeout_ms)
    yield ctx
    ctx.close()


def open_chat(
    context: BrowserContext, page: RunningPage, session_id: str, timeout_ms: int | None = None
) -> Page:
    """A tab on the session's page, once its WebSocket is open (within `timeout_ms`, else
    the context's and `expect`'s defaults)."""
    tab = context.new_page()
    tab.goto(page.session_url(session_id), timeout=timeout_ms)
    expect(tab.locator(OPEN)).to_have_count(1, timeout=timeout_ms)
    return tab


def screenshot_folder(variable: str, tmp_path: Path) -> Path:
    """The folder named by the environment `variable`, else `tmp_path`; made if missing."""
    folder = Path(os.environ.get(variable) or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# -- fixtures --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def page_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def shared_bridge(
    tmp_path_factory: pytest.TempPathFactory, page_port: int
) -> Iterator[RunningBridge]:
    with start_page_bridge(tmp_path_factory, page_port) as running:
        yield running


@pytest.fixture(scope="module")
def chat_page(
    shared_bridge: RunningBridge, page_port: int, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningPage]:
    with serving_page(shared_bridge, page_port, tmp_path_factory) as page:
        yield page


@pytest.fixture(scope="module")
def browser_timeout_ms() -> int:
    return TIMEOUT_MS


@pytest.fixture(scope="module")
def browser(browser_timeout_ms: int) -> Iterator[Browser]:
    expect.set_options(timeout=browser_timeout_ms)
    with sync_playwright() as playwright:
        chromium = launch_chromium(playwright)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def viewport_size() -> ViewportSize:
    return {"width": 1000, "height": 800}


@pytest.fixture
def context(
    browser: Browser, viewport_size: ViewportSize, browser_timeout_ms: int
) -> Iterator[BrowserContext]:
    width, height = viewport_size["width"], viewport_size["height"]
    with new_context(browser, width, height, browser_timeout_ms) as ctx:
        yield ctx


@pytest.fixture
def api(shared_bridge: RunningBridge) -> Iterator[BridgeClient]:
    with BridgeClient(shared_bridge.url) as client:
        yield client


@pytest.fixture
def session_prefix() -> str:
    return "t-"


@pytest.fixture
def session_id(session_prefix: str) -> str:
    return f"{session_prefix}{uuid.uuid4().hex[:12]}"
