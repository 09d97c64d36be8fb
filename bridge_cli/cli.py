"""`streamlit-bridge`: serve the bridge, talk to it, or start the chat page and demo bot.

    streamlit-bridge serve [--host H] [--port P] [--store URL]   the bridge
    streamlit-bridge send SESSION TEXT [--role ai]                publish one message
    streamlit-bridge tail SESSION [--after N]                     print messages live
    streamlit-bridge listen [--timeout S] [--session ID]          wait for a user message
    streamlit-bridge chat [--port 5001]                           the Streamlit chat page
    streamlit-bridge demo-bot                                     a bot that streams replies
    streamlit-bridge up                                           bridge + page + bot
    streamlit-bridge up --langflow-url URL --flow ID              bridge + page, a flow answers

Clients find the bridge by `--bridge URL` or `BRIDGE_URL` (default http://127.0.0.1:7881).
`chat` and `up` need the `page` extra (Streamlit); without it they say so and exit 2.
Each command's module is imported only when it runs: `serve` loads no client code.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from bridge.cli import add_run_arguments, add_serve_arguments, run_overrides
from bridge.cli import serve as run_serve
from bridge.wire import DEFAULT_BRIDGE_URL, DEFAULT_HOST, DEFAULT_PAGE_PORT, DEFAULT_PORT

__all__ = ["NEEDS_PAGE", "main"]

NEEDS_PAGE = frozenset({"chat", "up"})
"""Commands that need the `page` extra (Streamlit)."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamlit-bridge",
        description="Real-time link between Langflow flows and Streamlit chat pages.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    add_serve_arguments(
        sub.add_parser("serve", help="run the bridge (HTTP + WebSocket on one port)")
    )

    def client(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        p.add_argument(
            "--bridge", default=None, help=f"bridge URL (BRIDGE_URL, {DEFAULT_BRIDGE_URL})"
        )
        p.add_argument("--api-key", default=None, help="API key (BRIDGE_API_KEY)")
        return p

    send = client("send", "publish one message to a session")
    send.add_argument("session")
    send.add_argument("text")
    send.add_argument("--role", default="ai", choices=["ai", "user"])

    tail = client("tail", "print a session's messages as they arrive")
    tail.add_argument("session")
    tail.add_argument("--after", type=int, default=0, help="start after this seq (default: all)")

    listen = client("listen", "wait for the next user message (as Langflow's Listen does)")
    listen.add_argument("--timeout", type=float, default=120.0)
    listen.add_argument("--session", default=None, help="only this session")

    chat = client("chat", "start the Streamlit chat page (needs the page extra)")
    chat.add_argument("--port", type=int, default=DEFAULT_PAGE_PORT)
    chat.add_argument("--host", default=DEFAULT_HOST)
    chat.add_argument(
        "--browser-bridge",
        default=None,
        help="the bridge's URL as the user's browser reaches it, if not --bridge "
        "(BRIDGE_BROWSER_URL; e.g. https://chat.example.com behind a proxy)",
    )
    chat.add_argument(
        "--bind-user",
        action="store_const",
        const=True,
        default=None,
        help="open only sessions of the signed-in user (BRIDGE_CHAT_BIND_USER; needs a key)",
    )
    chat.add_argument(
        "--user-header",
        default=None,
        help="take the user from this header set by an authenticating proxy "
        "(BRIDGE_CHAT_USER_HEADER; default: Streamlit's st.user)",
    )

    client("demo-bot", "answer user messages by streaming a reply word by word")

    up = sub.add_parser(
        "up",
        help="start the bridge, the chat page and the demo bot, or a flow or agent that "
        "answers instead (--langflow-url/--flow, --agent-url); needs the page extra",
    )
    up.add_argument("--port", type=int, default=DEFAULT_PORT, help="bridge port")
    up.add_argument("--chat-port", type=int, default=DEFAULT_PAGE_PORT)
    up.add_argument("--store", default=None, help="bridge store URL")
    add_run_arguments(up)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return the process exit code."""
    args = _parser().parse_args(argv)
    env = os.environ
    if args.command in NEEDS_PAGE:
        from streamlit_client.extras import page_missing

        missing = page_missing(f"streamlit-bridge {args.command}")
        if missing is not None:
            print(missing, file=sys.stderr)
            return 2
    try:
        if args.command == "serve":
            return run_serve(args, env)
        if args.command == "up":
            from bridge_cli.up import up

            return up(args.port, args.chat_port, args.store, run_overrides(args))
        url = (args.bridge or env.get("BRIDGE_URL") or DEFAULT_BRIDGE_URL).rstrip("/")
        api_key = args.api_key or env.get("BRIDGE_API_KEY") or None
        if args.command == "chat":
            from streamlit_client.launcher import run_chat

            return run_chat(
                args.port,
                url,
                host=args.host,
                browser_bridge_url=args.browser_bridge,
                bind_user=args.bind_user,
                user_header=args.user_header,
            )
        if args.command == "demo-bot":
            from streamlit_client.demo_bot import run

            run(url, api_key=api_key)
            return 0
        from bridge_cli import commands

        if args.command == "send":
            return commands.send(url, api_key, args.session, args.text, args.role)
        if args.command == "tail":
            return commands.tail(url, api_key, args.session, args.after)
        if args.command == "listen":
            return commands.listen(url, api_key, args.timeout, args.session)
    except KeyboardInterrupt:
        return 130
    raise AssertionError(f"unhandled command {args.command}")
