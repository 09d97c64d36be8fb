"""Helpers for the browser tests and the browser benchmark: Chromium and real chat pages.

The page is the real `streamlit run` of `streamlit_client/page.py` (or any other script)
on a free port; Chromium is Debian's, driven by Playwright, never a downloaded build.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from playwright.sync_api import Browser, Playwright

from streamlit_client.launcher import PAGE, chat_command, chat_env
from tests.support import ROOT, stop_process, wait_until

__all__ = [
    "BROWSER_ARGS",
    "CHROMIUM",
    "RunningPage",
    "launch_chromium",
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
