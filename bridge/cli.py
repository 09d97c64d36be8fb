"""The `serve` command: its flags (each also a `BRIDGE_*` variable) and running it.

The whole command line, `streamlit-bridge` (also `python -m bridge` and
`python -m bridge_cli`), is `bridge_cli.cli`: it adds these flags to its
`serve` command. The server package has no client commands of its own.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping

from bridge.errors import BridgeError
from bridge.settings import Settings
from bridge.wire import DEFAULT_HOST, DEFAULT_PORT

__all__ = ["add_run_arguments", "add_serve_arguments", "run_overrides", "serve"]


def add_serve_arguments(serve: argparse.ArgumentParser) -> None:
    """The flags of `serve`; each overrides its `BRIDGE_*` variable (`Settings.load`)."""
    serve.add_argument("--host", help=f"bind address (BRIDGE_HOST, default {DEFAULT_HOST})")
    serve.add_argument("--port", type=int, help=f"port (BRIDGE_PORT, default {DEFAULT_PORT})")
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
    add_run_arguments(serve)
    serve.add_argument("--log-level", help="debug, info, warning (BRIDGE_LOG_LEVEL)")
    serve.add_argument("--access-log", action="store_true", help="log every HTTP request")


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags that make the bridge answer every user message with a flow or an agent
    (docs/langflow.md); `serve` and `up` share them."""
    runs = parser.add_argument_group("answering the chat with a Langflow flow or an AG-UI agent")
    runs.add_argument(
        "--langflow-url",
        help="Langflow server or `lfx serve` to run the flow on (BRIDGE_LANGFLOW_URL)",
    )
    runs.add_argument("--flow", help="id (UUID) of the flow to run (BRIDGE_FLOW)")
    runs.add_argument(
        "--langflow-api-key", help="Langflow API key, sent as x-api-key (BRIDGE_LANGFLOW_API_KEY)"
    )
    runs.add_argument("--agent-url", help="an AG-UI endpoint to run instead (BRIDGE_AGENT_URL)")
    runs.add_argument(
        "--agent-header",
        action="append",
        metavar="'NAME: VALUE'",
        help="a header for the agent, repeatable (BRIDGE_AGENT_HEADER, comma-separated)",
    )
    runs.add_argument(
        "--runs-max", type=int, help="runs at once across sessions (BRIDGE_RUNS_MAX, default 16)"
    )
    runs.add_argument(
        "--run-timeout",
        type=float,
        dest="run_timeout_s",
        help="give up a run silent this many seconds (BRIDGE_RUN_TIMEOUT_S, default 300)",
    )


def run_overrides(args: argparse.Namespace) -> dict[str, object]:
    """The run flags of `args` as `Settings.load` overrides (None: not given)."""
    return {
        "langflow_url": args.langflow_url,
        "flow": args.flow,
        "langflow_api_key": args.langflow_api_key,
        "agent_url": args.agent_url,
        "agent_header": tuple(args.agent_header) if args.agent_header else None,
        "runs_max": args.runs_max,
        "run_timeout_s": args.run_timeout_s,
    }


def serve(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """Run the bridge until it is stopped; 2 if the settings are invalid."""
    try:
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
            **run_overrides(args),
        )
        from bridge.server import serve as run

        run(settings, access_log=args.access_log)
    except BridgeError as exc:
        print(f"streamlit-bridge: {exc.detail}", file=sys.stderr)
        return 2
    return 0
