"""Load-generator worker processes (`bench.load`) as the orchestrators drive them.

`bench.scenarios` (the main table) and `bench.cluster` (the Redis table) start workers,
wait for their `ready`, collect their results and end them the same way: here, once.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psutil

__all__ = ["Worker", "drain", "percentile", "ready", "workers"]

# spawn: a fresh interpreter per worker, no inherited loop, threads or sockets.
_MP = multiprocessing.get_context("spawn")


class Worker:
    """One worker process and the parent's end of its pipe."""

    def __init__(self, target: Callable[[Any, Any], None], job: Any) -> None:
        self.conn, child = _MP.Pipe()
        self.proc = _MP.Process(target=target, args=(job, child), daemon=True)
        self.proc.start()
        child.close()
        self.ps = psutil.Process(self.proc.pid)
        self.reported = False

    def expect(self, kind: str, deadline: float) -> Any:
        """Wait (until the monotonic `deadline`) for a `(kind, data)` message."""
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not self.conn.poll(remaining):
            raise TimeoutError(f"worker {self.proc.pid}: no {kind!r} in time")
        got, data = self.conn.recv()
        if got != kind:
            raise RuntimeError(f"worker {self.proc.pid}: {got}: {data}")
        self.reported = kind == "result"
        return data

    def stop(self) -> None:
        """Tell it to finish (it then sends its result)."""
        with contextlib.suppress(OSError):  # it may have finished and closed its end
            self.conn.send("stop")

    def end(self) -> None:
        """Let it close its connections and exit; terminate it if it overstays (it is our
        own child)."""
        with contextlib.suppress(OSError):
            self.conn.send("close")
        # A worker that has sent its result sometimes lingers ~10 s in its interpreter's
        # exit; its work is done, so it is not waited for that long.
        self.proc.join(timeout=2 if self.reported else 10)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(timeout=5)
        self.conn.close()


@contextmanager
def workers(target: Callable[[Any, Any], None], jobs: Sequence[Any]) -> Iterator[list[Worker]]:
    """One started worker per job, all ended on the way out."""
    started: list[Worker] = []
    try:
        for job in jobs:
            started.append(Worker(target, job))
        yield started
    finally:
        for w in started:
            w.end()


def ready(started: Sequence[Worker], timeout: float) -> int:
    """Wait for every worker's `ready`; fail loudly if any connection failed. Returns the
    number of connections they made."""
    deadline = time.monotonic() + timeout
    connected = 0
    for w in started:
        info = w.expect("ready", deadline)
        if info.get("failed"):
            raise RuntimeError(f"{info['failed']} connections failed: {info['errors']}")
        connected += info["connected"]
    return connected


def drain(subs: Sequence[Worker], grace: float) -> list[dict[str, Any]]:
    """Results of subscribers that end by themselves within `grace` s; the others are stopped."""
    deadline = time.monotonic() + grace
    results = []
    for w in subs:
        if not w.conn.poll(max(0.0, deadline - time.monotonic())):
            w.stop()
        results.append(w.expect("result", time.monotonic() + 30.0))
    return results


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted sequence; NaN if empty."""
    if not ordered:
        return math.nan
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]
