"""`python -m bench.fanout_cost`: CPU per delivery of each server's fan-out, no kernel.

Each server (the reference hub, the bridge) is built as `python -m bench` runs it (its app
under uvicorn's sans-I/O WebSocket protocol, the bridge's own protocol subclass), but its
sockets are in-memory transports: `N` subscribers of one session open their WebSocket with
a real handshake, then messages are POSTed to the app's ASGI callable in this process and
the process CPU time is divided by the frames written. What is left is the server's own
Python per delivery: the hub, the outbox, uvicorn's `send`, the WebSocket framing and the
transport's `write` call, without the kernel's `send()` (the same for every server) and
without the noise of other processes (CPU time of one process barely depends on them).
`--profile` adds a cProfile of the bridge's run (top functions by own time).

    .venv/bin/python -m bench.fanout_cost [--subs 1000] [--messages 200] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import json
import pstats
import sys
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import uvicorn
from uvicorn.server import ServerState

from bench.reference_hub import create_app as reference_app

__all__ = ["main", "measure"]

_SESSION = "fanout-cost"
_BODY = json.dumps({
    "role": "ai",
    "content": "bench|fanout|1|0.0|lorem ipsum dolor sit amet, consectetur adipiscing elit",
}).encode()
_HANDSHAKE = (
    f"GET /api/v1/sessions/{_SESSION}/ws HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    "Upgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
).encode()
_WARMUP = 20


class _Transport(asyncio.Transport):
    """A socket that takes every write at once and counts them."""

    def __init__(self, port: int) -> None:
        super().__init__()
        self._extra = {"peername": ("127.0.0.1", port), "sockname": ("127.0.0.1", 8000)}
        self.writes = 0
        self.closing = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._extra.get(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes += 1

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def _post_scope() -> dict[str, Any]:
    path = f"/api/v1/sessions/{_SESSION}/messages"
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 80),
        "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"),
                    (b"content-length", str(len(_BODY)).encode())],
        "state": {},
    }


async def _quiet(transports: Sequence[_Transport]) -> None:
    """Wait until no socket was written to for 0.2 s (hello, presence: joining is over)."""
    last = -1
    while True:
        await asyncio.sleep(0.2)
        now = sum(t.writes for t in transports)
        if now == last:
            return
        last = now


async def measure(
    config: uvicorn.Config, subs: int, messages: int, profile: cProfile.Profile | None = None
) -> float:
    """CPU microseconds per delivery of the app of `config` (loaded, its lifespan
    running): `subs` subscribers, `messages` POSTs, each frame written to every one."""
    protocol_class: Any = config.ws_protocol_class  # uvicorn types it as a bare Protocol
    if protocol_class is None:
        raise RuntimeError("uvicorn has no WebSocket protocol here")
    state = ServerState()
    protocols: list[asyncio.Protocol] = []
    transports: list[_Transport] = []
    for i in range(subs):
        protocol = protocol_class(config=config, server_state=state, app_state={})
        transport = _Transport(10000 + i)
        protocol.connection_made(transport)
        protocol.data_received(_HANDSHAKE)
        protocols.append(protocol)
        transports.append(transport)
    await _quiet(transports)
    if sum(t.writes for t in transports) < subs:
        raise RuntimeError("subscribers did not get their hello")
    statuses: set[int] = set()
    app = config.loaded_app
    scope = _post_scope()

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": _BODY, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.add(message["status"])

    for _ in range(_WARMUP):
        await app(dict(scope), receive, send)
    await _quiet(transports)
    before = sum(t.writes for t in transports)
    if profile is not None:
        profile.enable()
    t0 = time.process_time()
    for _ in range(messages):
        await app(dict(scope), receive, send)
    spent = time.process_time() - t0
    if profile is not None:
        profile.disable()
    delivered = sum(t.writes for t in transports) - before
    if statuses != {200}:
        raise RuntimeError(f"answers other than 200: {sorted(statuses)}")
    if delivered != subs * messages:
        raise RuntimeError(f"{delivered} frames written, expected {subs * messages}")
    for protocol in protocols:
        protocol.connection_lost(None)
    await _quiet(transports)
    return 1e6 * spent / delivered


def _config(app: Any, **kwargs: Any) -> uvicorn.Config:
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                            ws_per_message_deflate=False, **kwargs)
    config.load()
    return config


@contextlib.asynccontextmanager
async def _bridge_config() -> AsyncIterator[uvicorn.Config]:
    from bridge.server import build_server  # the bridge is optional for the rest of bench/
    from bridge.settings import Settings

    env = {"BRIDGE_SOCKETS_PER_CLIENT_MAX": "1000000", "BRIDGE_SOCKETS_MAX": "1000000"}
    server = build_server(Settings.load(env, store="memory://", log_level="warning"))
    config = server.config
    config.lifespan = "off"
    config.load()
    app: Any = config.app
    async with app.router.lifespan_context(app):
        yield config


async def _reference(subs: int, messages: int) -> float:
    return await measure(_config(reference_app(), ws="websockets-sansio"), subs, messages)


async def _bridge(subs: int, messages: int, profile: cProfile.Profile | None = None) -> float:
    async with _bridge_config() as config:
        return await measure(config, subs, messages, profile)


async def _main(args: argparse.Namespace) -> None:
    if args.only:  # one figure of one server: for `valgrind --tool=callgrind`
        run = _bridge if args.only == "bridge" else _reference
        print(f"{args.only}: {await run(args.subs, args.messages):6.2f} us of CPU per delivery")
        return
    ref, bridge = [], []
    for _ in range(args.rounds):  # alternate, so that drift falls on both
        ref.append(await _reference(args.subs, args.messages))
        bridge.append(await _bridge(args.subs, args.messages))
    ref.sort()
    bridge.sort()
    r, b = ref[len(ref) // 2], bridge[len(bridge) // 2]
    print(f"reference: {r:6.2f} us of CPU per delivery ({args.subs} subscribers, "
          f"{args.messages} messages, median of {args.rounds})")
    print(f"bridge:    {b:6.2f} us of CPU per delivery ({b / r:.2f}x)")
    if args.profile:  # a separate run: profiling slows what it watches
        profile = cProfile.Profile()
        await _bridge(args.subs, args.messages, profile)
        out = io.StringIO()
        pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(25)
        print(out.getvalue())


def main(argv: Sequence[str] | None = None) -> int:
    """Parse options and print the two figures."""
    parser = argparse.ArgumentParser(prog="python -m bench.fanout_cost", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subs", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--only", choices=("reference", "bridge"),
                        help="one run of one server, nothing else (for instruction counts)")
    args = parser.parse_args(argv)
    args.subs = max(1, min(args.subs, 20_000))
    args.messages = max(10, min(args.messages, 100_000))
    args.rounds = max(1, min(args.rounds, 20))
    try:
        import uvloop
    except ImportError:
        asyncio.run(_main(args))
    else:
        uvloop.run(_main(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
