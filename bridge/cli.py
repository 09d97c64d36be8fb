"""`streamlit-bridge`: serve the bridge, talk to it, or start the chat page and demo bot.

    streamlit-bridge serve [--host H] [--port P] [--store URL]   the bridge
    streamlit-bridge send SESSION TEXT [--role ai]                publish one message
    streamlit-bridge tail SESSION [--after N]                     print messages live
    streamlit-bridge listen [--timeout S] [--session ID]          wait for a user message
    streamlit-bridge chat [--port 5001]                           the Streamlit chat page
    streamlit-bridge demo-bot                                     a bot that streams replies
    streamlit-bridge up                                           bridge + page + bot

Clients find the bridge by `--bridge URL` or `BRIDGE_URL` (default http://127.0.0.1:7881).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from bridge import client_commands
from bridge.errors import BridgeError
from bridge.settings import Settings

__all__ = ["main"]

DEFAULT_BRIDGE_URL = "http://127.0.0.1:7881"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamlit-bridge",
        description="Real-time link between Langflow flows and Streamlit chat pages.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the bridge (HTTP + WebSocket on one port)")
    serve.add_argument("--host", help="bind address (BRIDGE_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (BRIDGE_PORT, default 7881)")
    serve.add_argument(
        "--store",
        help="memory://, sqlite:///path.db or redis://host:port/db "
        "(BRIDGE_STORE, default sqlite:///data/bridge.db)",
    )
    serve.add_argument("--api-key", help="require this key (BRIDGE_API_KEY)")
    serve.add_argument("--max-message-bytes", type=int, help="BRIDGE_MAX_MESSAGE_BYTES")
    serve.add_argument(
        "--listen-timeout-max",
        type=float,
        dest="listen_timeout_max_s",
        help="cap of Listen timeouts in seconds (BRIDGE_LISTEN_TIMEOUT_MAX_S)",
    )
    serve.add_argument(
        "--allow-no-key",
        action="store_const",
        const=True,
        default=None,
        help="serve beyond loopback without an API key (BRIDGE_ALLOW_NO_KEY); only when "
        "something in front of the bridge authenticates every request",
    )
    serve.add_argument("--log-level", help="debug, info, warning (BRIDGE_LOG_LEVEL)")
    serve.add_argument("--access-log", action="store_true", help="log every HTTP request")

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

    chat = client("chat", "start the Streamlit chat page")
    chat.add_argument("--port", type=int, default=5001)
    chat.add_argument("--host", default="127.0.0.1")
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

    up = sub.add_parser("up", help="start the bridge, the chat page and the demo bot")
    up.add_argument("--port", type=int, default=7881, help="bridge port")
    up.add_argument("--chat-port", type=int, default=5001)
    up.add_argument("--store", default=None, help="bridge store URL")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return the process exit code."""
    args = _parser().parse_args(argv)
    env = os.environ
    try:
        if args.command == "serve":
            from bridge.server import serve

            settings = Settings.load(
                env,
                host=args.host,
                port=args.port,
                store=args.store,
                api_key=args.api_key,
                max_message_bytes=args.max_message_bytes,
                listen_timeout_max_s=args.listen_timeout_max_s,
                log_level=args.log_level,
                allow_no_key=args.allow_no_key,
            )
            serve(settings, access_log=args.access_log)
            return 0
        if args.command == "up":
            return client_commands.up(args.port, args.chat_port, args.store)
        url = (args.bridge or env.get("BRIDGE_URL") or DEFAULT_BRIDGE_URL).rstrip("/")
        api_key = args.api_key or env.get("BRIDGE_API_KEY") or None
        if args.command == "send":
            return client_commands.send(url, api_key, args.session, args.text, args.role)
        if args.command == "tail":
            return client_commands.tail(url, api_key, args.session, args.after)
        if args.command == "listen":
            return client_commands.listen(url, api_key, args.timeout, args.session)
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
    except BridgeError as exc:
        print(f"streamlit-bridge: {exc.detail}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    raise AssertionError(f"unhandled command {args.command}")
