"""`streamlit-bridge up`: the bridge, the chat page and the demo bot as child processes,
supervised until one of them stops or we are told to (Ctrl-C, SIGTERM, SIGHUP)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping

from bridge.wire import DEFAULT_HOST, page_origins
from streamlit_client.client import BridgeClient

__all__ = ["up"]

START_TIMEOUT_S = 30


def _who(env: Mapping[str, str]) -> str:
    if env.get("BRIDGE_LANGFLOW_URL"):
        return f"the flow on {env['BRIDGE_LANGFLOW_URL']}"
    if env.get("BRIDGE_AGENT_URL"):
        return f"the agent at {env['BRIDGE_AGENT_URL']}"
    return "the demo bot"


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _run_env(runs: Mapping[str, object]) -> dict[str, str]:
    """The run flags given to `up` as the bridge's `BRIDGE_*` variables (an API key in the
    environment, unlike an argument, is not shown by `ps`)."""
    env: dict[str, str] = {}
    for name, value in runs.items():
        if value is None:
            continue
        text = ",".join(value) if isinstance(value, tuple) else str(value)
        env[f"BRIDGE_{name.upper()}"] = text
    return env


def up(
    port: int, chat_port: int, store: str | None, runs: Mapping[str, object] | None = None
) -> int:
    """Start bridge, chat page and demo bot as child processes; stop all on Ctrl-C.
    With run settings (`langflow_url` and `flow`, or `agent_url`, ...: `bridge.cli.
    run_overrides`), the bridge answers the chat itself and no demo bot starts."""
    url = f"http://{DEFAULT_HOST}:{port}"
    exe = [sys.executable, "-m", "bridge"]  # `python -m bridge` is `streamlit-bridge`
    # SIGTERM or a closed terminal must stop the children too, as Ctrl-C does.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _exit_on_signal)
    serve = [*exe, "serve", "--port", str(port)] + (["--store", store] if store else [])
    # The page's origin must be allowed to open sockets; the default allows port 5001 only.
    serve_env = {**os.environ, **_run_env(runs or {})}
    serve_env.setdefault("BRIDGE_ALLOWED_ORIGINS", ",".join(page_origins(chat_port)))
    answering = bool(serve_env.get("BRIDGE_LANGFLOW_URL") or serve_env.get("BRIDGE_AGENT_URL"))
    children = [subprocess.Popen(serve, env=serve_env)]
    try:
        print(f"starting the bridge on {url} ...", flush=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        with BridgeClient(url) as bridge:
            while not bridge.healthy():
                if children[0].poll() is not None:
                    print("the bridge failed to start (see above)", file=sys.stderr)
                    return 1
                if time.monotonic() > deadline:
                    print(f"the bridge did not answer within {START_TIMEOUT_S} s", file=sys.stderr)
                    return 1
                time.sleep(0.1)  # poll interval while the bridge starts
        env = {**os.environ, "BRIDGE_URL": url}
        if not answering:
            children.append(subprocess.Popen([*exe, "demo-bot", "--bridge", url], env=env))
        children.append(
            subprocess.Popen([*exe, "chat", "--port", str(chat_port), "--bridge", url], env=env)
        )
        print(
            f"\n  Chat page:  http://{DEFAULT_HOST}:{chat_port}\n  Bridge API: {url}/docs\n"
            f"  Type in the page; {_who(serve_env)} streams a reply. Ctrl-C stops everything.\n",
            flush=True,
        )
        while all(c.poll() is None for c in children):
            time.sleep(0.5)  # supervise: exit when any child exits
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        for child in reversed(children):
            if child.poll() is None:
                child.terminate()
        for child in children:
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
