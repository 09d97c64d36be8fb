"""The client side of the CLI: `send`, `tail`, `listen` and `up`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote

import httpx
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

__all__ = ["listen", "send", "tail", "up"]

_RECONNECT_CODES = {1001, 1006, 1011, 1012, 1013, 4000}


class _Failed(Exception):
    """A client command failed; the message says why, for the terminal."""


def _headers(api_key: str | None) -> dict[str, str]:
    return {"x-api-key": api_key} if api_key else {}


@contextmanager
def _reporting() -> Iterator[None]:
    try:
        yield
    except httpx.ConnectError as exc:
        raise _Failed(f"cannot reach the bridge: {exc}") from None
    except httpx.HTTPError as exc:
        raise _Failed(f"request failed: {exc!r}") from None


def _check(resp: httpx.Response) -> Any:
    if resp.status_code >= 400:
        try:
            detail = resp.json().get("detail", resp.text)
        except ValueError:
            detail = resp.text
        raise _Failed(f"bridge answered {resp.status_code}: {detail}")
    return resp.json() if resp.content else None


def _run(fn: Any, *args: Any) -> int:
    try:
        return int(fn(*args))
    except _Failed as exc:
        print(f"streamlit-bridge: {exc}", file=sys.stderr)
        return 1


def send(url: str, api_key: str | None, session: str, text: str, role: str) -> int:
    """POST one message; print the stored message."""

    def go() -> int:
        with _reporting():
            resp = httpx.post(
                f"{url}/api/v1/sessions/{quote(session, safe='')}/messages",
                json={"role": role, "content": text},
                headers=_headers(api_key),
                timeout=10,
            )
        print(json.dumps(_check(resp), ensure_ascii=False))
        return 0

    return _run(go)


def listen(url: str, api_key: str | None, timeout: float, session: str | None) -> int:
    """Wait for one user message; print it (exit 0) or say none came (exit 3)."""

    def go() -> int:
        path = (
            "/api/v1/listen/message"
            if session is None
            else (f"/api/v1/sessions/{quote(session, safe='')}/listen")
        )
        with _reporting():
            resp = httpx.get(
                f"{url}{path}",
                params={"timeout": timeout},
                headers=_headers(api_key),
                timeout=httpx.Timeout(10, read=timeout + 10),
            )
        if resp.status_code == 204:
            print(f"no user message within {timeout:g} s", file=sys.stderr)
            return 3
        print(json.dumps(_check(resp), ensure_ascii=False))
        return 0

    return _run(go)


def tail(url: str, api_key: str | None, session: str, after: int) -> int:
    """Print the session's messages as they arrive; reconnect with `after` when the bridge
    restarts or drops this client for being slow. Ctrl-C stops."""

    def go() -> int:
        last = after
        ws_base = "ws" + url[len("http") :] if url.startswith("http") else url
        backoff = 0.25
        path = f"/api/v1/sessions/{quote(session, safe='')}"
        while True:
            target = f"{ws_base}{path}/ws?after={last}"
            if api_key:  # sockets take a session token, minted with the key
                with _reporting():
                    minted = _check(httpx.post(f"{url}{path}/token", headers=_headers(api_key)))
                target += f"&token={minted['token']}"
            try:
                with connect(
                    target, additional_headers=_headers(api_key), compression=None, open_timeout=10
                ) as ws:
                    backoff = 0.25
                    for raw in ws:
                        last = _print_event(json.loads(raw), last)
            except ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd else 1006
                if code not in _RECONNECT_CODES:
                    reason = exc.rcvd.reason if exc.rcvd else ""
                    raise _Failed(f"bridge closed the connection ({code} {reason})") from None
                print(f"-- disconnected ({code}); reconnecting after seq {last}", file=sys.stderr)
            except (OSError, InvalidStatus) as exc:
                print(f"-- cannot connect ({exc}); retrying in {backoff:.1f}s", file=sys.stderr)
            time.sleep(backoff)  # reconnect backoff
            backoff = min(backoff * 2, 5.0)

    return _run(go)


def _print_event(event: dict[str, Any], last: int) -> int:
    kind = event.get("event")
    if kind == "hello":
        print(
            f"-- session {event['session_id']} (last seq {event['last_seq']}, "
            f"{event['subscribers']} subscriber(s))",
            file=sys.stderr,
        )
    elif kind in ("message", "stream.end"):
        m = event["message"]
        if kind == "stream.end":
            print()
        else:
            print(f"[{m['seq']}] {m['role']}: {m['content']}")
        return int(m["seq"])
    elif kind == "stream.start":
        print(f"[..] {event['role']}: ", end="", flush=True)
    elif kind == "stream.delta":
        print(event["delta"], end="", flush=True)
    elif kind == "stream.abort":
        print(f"  [aborted: {event.get('detail', '')}]")
    elif kind == "reset":
        print("-- history reset", file=sys.stderr)
        return 0
    return last


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def up(port: int, chat_port: int, store: str | None) -> int:
    """Start bridge, chat page and demo bot as child processes; stop all on Ctrl-C."""
    url = f"http://127.0.0.1:{port}"
    exe = [sys.executable, "-m", "bridge"]
    # SIGTERM or a closed terminal must stop the children too, as Ctrl-C does.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _exit_on_signal)
    serve = [*exe, "serve", "--port", str(port)] + (["--store", store] if store else [])
    # The page's origin must be allowed to open sockets; the default allows port 5001 only.
    origins = ",".join(f"http://{h}:{chat_port}" for h in ("localhost", "127.0.0.1", "[::1]"))
    serve_env = {**os.environ}
    serve_env.setdefault("BRIDGE_ALLOWED_ORIGINS", origins)
    children = [subprocess.Popen(serve, env=serve_env)]
    try:
        print(f"starting the bridge on {url} ...", flush=True)
        deadline = time.monotonic() + 30
        while True:
            if children[0].poll() is not None:
                print("the bridge failed to start (see above)", file=sys.stderr)
                return 1
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                print("the bridge did not answer within 30 s", file=sys.stderr)
                return 1
            time.sleep(0.1)  # poll interval while the bridge starts
        env = {**os.environ, "BRIDGE_URL": url}
        children.append(subprocess.Popen([*exe, "demo-bot", "--bridge", url], env=env))
        children.append(
            subprocess.Popen([*exe, "chat", "--port", str(chat_port), "--bridge", url], env=env)
        )
        print(
            f"\n  Chat page:  http://127.0.0.1:{chat_port}\n  Bridge API: {url}/docs\n"
            "  Type in the page; the demo bot streams a reply. Ctrl-C stops everything.\n",
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
