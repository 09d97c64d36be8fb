"""`python -m bench.asgi_cost`: CPU per POST of each app's ASGI layer alone, no sockets.

The same request (`POST /api/v1/sessions/{id}/messages`, 1,000 sessions in turn, no
subscribers) is handed straight to each app's ASGI callable in this process, and the process
CPU time per request is printed: routing, validation, the service, the store and the
response, without uvicorn's HTTP parsing or the kernel. It complements the table of
`python -m bench` where that is noisy: CPU time of a single process barely depends on what
else the machine runs. `--profile` adds a cProfile of the bridge's run (top functions by
own time).

    .venv/bin/python -m bench.asgi_cost [--requests 5000] [--store memory://]
        [--concurrency 1] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import pstats
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.reference_hub import create_app as reference_app

__all__ = ["main", "measure"]

_BODY = json.dumps({
    "role": "ai",
    "content": "bench|asgi|1|0.0|lorem ipsum dolor sit amet, consectetur adipiscing elit",
}).encode()
_WARMUP = 200


def _scope(session_id: str) -> dict[str, Any]:
    path = f"/api/v1/sessions/{session_id}/messages"
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 80),
        "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"),
                    (b"content-length", str(len(_BODY)).encode())],
        "state": {},
    }


async def measure(
    app: Any, requests: int, profile: cProfile.Profile | None = None, concurrency: int = 1
) -> float:
    """CPU microseconds per POST of `app`, after a warm-up; fails on any non-200.

    `concurrency` requests are in flight at a time (as many workers, each sending in turn),
    which is what lets a grouping store share one commit among them.
    """
    statuses: set[int] = set()

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": _BODY, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.add(message["status"])

    for i in range(_WARMUP):
        await app(_scope(f"warm-{i}"), receive, send)
    if profile is not None:
        profile.enable()
    async def worker(first: int) -> None:
        for i in range(first, requests, concurrency):
            await app(_scope(f"s-{i % 1000}"), receive, send)

    t0 = time.process_time()
    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    spent = time.process_time() - t0
    if profile is not None:
        profile.disable()
    if statuses != {200}:
        raise RuntimeError(f"answers other than 200: {sorted(statuses)}")
    return 1e6 * spent / requests


async def _bridge(
    store: str, requests: int, profile: cProfile.Profile | None, concurrency: int
) -> float:
    from bridge.app import create_app  # the bridge is optional for the rest of bench/
    from bridge.settings import Settings

    app = create_app(Settings.load({}, store=store, log_level="warning"))
    async with app.router.lifespan_context(app):
        return await measure(app, requests, profile, concurrency)


async def _main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-asgi-") as tmp:
        store = args.store.replace("{tmp}", str(Path(tmp)))
        # Alternate, so that drift falls on both; report each side's median.
        ref, bridge = [], []
        for _ in range(args.rounds):
            ref.append(await measure(reference_app(), args.requests, None, args.concurrency))
            bridge.append(await _bridge(store, args.requests, None, args.concurrency))
        ref.sort()
        bridge.sort()
        r, b = ref[len(ref) // 2], bridge[len(bridge) // 2]
        print(f"reference:                 {r:7.1f} us of CPU per POST")
        print(f"bridge, store {args.store}: {b:7.1f} us of CPU per POST ({b / r:.2f}x)")
        if args.profile:  # a separate run: profiling slows what it watches
            profile = cProfile.Profile()
            await _bridge(store, args.requests, profile, args.concurrency)
            out = io.StringIO()
            pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(25)
            print(out.getvalue())


def main(argv: Sequence[str] | None = None) -> int:
    """Parse options and print the two figures."""
    parser = argparse.ArgumentParser(prog="python -m bench.asgi_cost", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--store", default="memory://",
                        help="bridge store URL; {tmp} is a fresh temporary folder, e.g. "
                             "sqlite:///{tmp}/b.db")
    parser.add_argument("--concurrency", type=int, default=1,
                        help="requests in flight at a time; 64 matches `python -m bench`'s "
                             "POST/s row and lets the SQLite store group commits")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args(argv)
    args.requests = max(100, min(args.requests, 1_000_000))
    args.rounds = max(1, min(args.rounds, 20))
    args.concurrency = max(1, min(args.concurrency, 1000))
    try:
        import uvloop
    except ImportError:
        asyncio.run(_main(args))
    else:
        uvloop.run(_main(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
