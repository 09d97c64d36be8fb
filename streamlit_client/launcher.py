"""Serve the chat page: `streamlit run streamlit_client/page.py` as a subprocess.

The page reads its settings from environment variables, which `run_chat` sets for the
subprocess: `BRIDGE_URL`, `BRIDGE_BROWSER_URL`, `BRIDGE_API_KEY`, `BRIDGE_CHAT_HISTORY`,
and the binding of sessions to users, `BRIDGE_CHAT_BIND_USER`, `BRIDGE_CHAT_USER_HEADER`,
`BRIDGE_CHAT_USER_CLAIM` (see `streamlit_client.config`). Streamlit runs headless,
without usage statistics, file watching or opening a browser.

`python -m streamlit_client.launcher --port 5001 --bridge URL` does the same from a shell.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from bridge.wire import DEFAULT_BRIDGE_URL, DEFAULT_PAGE_PORT
from streamlit_client.config import ChatConfig

__all__ = ["PAGE", "chat_command", "chat_env", "main", "run_chat"]

PAGE = Path(__file__).resolve().parent / "page.py"


def chat_command(
    port: int,
    *,
    host: str = "127.0.0.1",
    page: Path = PAGE,
    python: str = sys.executable,
) -> list[str]:
    """The `streamlit run` command line for `page` on `host:port`."""
    return [
        python,
        "-m",
        "streamlit",
        "run",
        str(page),
        "--server.port",
        str(port),
        "--server.address",
        host,
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
        "--server.fileWatcherType",
        "none",
        "--server.runOnSave",
        "false",
        "--global.developmentMode",
        "false",
        "--client.toolbarMode",
        "minimal",
        "--theme.base",
        "light",
    ]


def chat_env(
    bridge_url: str,
    *,
    browser_bridge_url: str | None = None,
    api_key: str | None = None,
    history_limit: int | None = None,
    bind_user: bool | None = None,
    user_header: str | None = None,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment for the page subprocess: `base` (default ours) plus the page config.

    Settings left as None keep the value `base` has, if any.
    """
    env = dict(os.environ if base is None else base)
    inherited = ChatConfig.from_env(env)
    config = ChatConfig(
        bridge_url=bridge_url.rstrip("/"),
        browser_bridge_url=browser_bridge_url or inherited.browser_bridge_url,
        api_key=api_key or inherited.api_key,
        history_limit=inherited.history_limit if history_limit is None else history_limit,
        bind_user=inherited.bind_user if bind_user is None else bind_user,
        user_header=user_header or inherited.user_header,
        user_claim=inherited.user_claim,
    )
    # `to_env` leaves defaults out: drop what `base` says, so that bind_user=False wins.
    for name in ("BRIDGE_CHAT_BIND_USER", "BRIDGE_CHAT_USER_HEADER", "BRIDGE_CHAT_USER_CLAIM"):
        env.pop(name, None)
    env.update(config.to_env())
    return env


def run_chat(
    port: int,
    bridge_url: str,
    *,
    host: str = "127.0.0.1",
    browser_bridge_url: str | None = None,
    bind_user: bool | None = None,
    user_header: str | None = None,
) -> int:
    """Serve the chat page until it stops (Ctrl-C); returns Streamlit's exit code.

    The API key, the browser's bridge URL, the history setting and the binding of
    sessions to users, when not given, are taken from our environment (`BRIDGE_API_KEY`,
    `BRIDGE_BROWSER_URL`, `BRIDGE_CHAT_HISTORY`, `BRIDGE_CHAT_BIND_USER`,
    `BRIDGE_CHAT_USER_HEADER`). Streamlit prints the page's URL.
    """
    env = chat_env(
        bridge_url,
        browser_bridge_url=browser_bridge_url,
        bind_user=bind_user,
        user_header=user_header,
    )
    process = subprocess.Popen(chat_command(port, host=host), env=env)

    def forward(signum: int, frame: object) -> None:
        # Stopped by a signal that only we got (SIGTERM from `up` or a supervisor):
        # pass it on, or Streamlit would outlive us and keep serving the page.
        process.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        return process.wait()
    except KeyboardInterrupt:
        # Streamlit got the same Ctrl-C (same process group): let it finish cleanly.
        try:
            return process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m streamlit_client.launcher [--port PORT] [--bridge URL] ...`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=DEFAULT_PAGE_PORT)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--bridge", default=os.environ.get("BRIDGE_URL", DEFAULT_BRIDGE_URL))
    parser.add_argument("--browser-bridge", default=os.environ.get("BRIDGE_BROWSER_URL"))
    parser.add_argument(
        "--bind-user",
        action="store_true",
        default=None,
        help="bind sessions to the signed-in user (BRIDGE_CHAT_BIND_USER; needs an API key)",
    )
    parser.add_argument(
        "--user-header",
        default=None,
        help="take the user from this header set by an authenticating proxy "
        "(BRIDGE_CHAT_USER_HEADER; default: st.user)",
    )
    args = parser.parse_args(argv)
    return run_chat(
        args.port,
        args.bridge,
        host=args.host,
        browser_bridge_url=args.browser_bridge,
        bind_user=args.bind_user,
        user_header=args.user_header,
    )


if __name__ == "__main__":
    sys.exit(main())
