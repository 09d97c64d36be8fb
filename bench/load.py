"""Load-generator processes: subscribers that time what they receive, publishers that POST.

Each worker is its own process (the servers get their own too), runs one asyncio loop
(uvloop when installed: less client CPU per frame), talks to the orchestrator over
a `multiprocessing` pipe, and is bounded in time by its job's `timeout_s`.

Pipe protocol: a worker sends `("ready", info)` once connected, then `("result", data)` when
done, or `("error", text)` if it failed. A subscriber's measurement ends when it has received
every message it expects, or when the orchestrator sends `"stop"`; it closes its connections
only when told `"close"` (or when the pipe closes).

Messages are recognised by their content, `bench|<tag>|<index>|<publish time>|<filler>`: the
tag keeps runs apart, and frames without it (`hello`, the bridge's welcome message,
`presence`) are skipped. The publish time is `time.monotonic()` read just before the request
is written: on Linux that is CLOCK_MONOTONIC, one clock for every process of the machine, so
the subscriber's receipt time minus it is the publish-to-deliver latency.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import resource
import time
from array import array
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any
from urllib.parse import quote

from bench.wire import HttpConn, HttpError, WsClient, WsError, open_http, open_ws, post_bytes

__all__ = [
    "PublishJob",
    "SubscribeJob",
    "Target",
    "publisher_main",
    "raise_nofile",
    "slice_owner",
    "subscriber_main",
    "ws_path",
]

# Filler after the stamp so a message is the size of a short chat line, not a few bytes.
FILLER = "lorem ipsum dolor sit amet, consectetur adipiscing elit sed do eiusmod"
_SEQ_RE = re.compile(rb'"seq":\s*(\d+)')
# A window publisher whose pacer sees nothing for this long gives up (server stuck or gone).
STALL_S = 10.0


def raise_nofile(wanted: int = 65536) -> int:
    """Raise this process's open-file limit as far as allowed; return the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def ws_path(session_id: str) -> str:
    """The subscription path of a session (ids are URL-encoded, as every client must)."""
    return f"/api/v1/sessions/{quote(session_id, safe='')}/ws"


def _post_path(session_id: str) -> str:
    return f"/api/v1/sessions/{quote(session_id, safe='')}/messages"


def _stamp_re(tag: str) -> re.Pattern[bytes]:
    return re.compile(rb"bench\|" + re.escape(tag.encode()) + rb"\|(\d+)\|([0-9.]+)\|")


def _run(main: Coroutine[Any, Any, Any]) -> Any:
    """Run `main` on uvloop if installed (less client CPU per frame), else asyncio's loop."""
    try:
        import uvloop  # optional; imported here, only in worker processes
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def _worker(
    job: Any, conn: Connection, body: Callable[[Any, Connection], Coroutine[Any, Any, Any]]
) -> None:
    """Common frame of a worker process: run, send the result or the error, close the pipe."""
    raise_nofile()
    if job.cpus:
        os.sched_setaffinity(0, job.cpus)
    try:
        result = _run(asyncio.wait_for(body(job, conn), job.timeout_s))
        if result is not None:  # None: the body sent its result itself
            conn.send(("result", result))
            if job.hold:  # stay until the orchestrator has read our CPU time ("close")
                conn.poll(job.timeout_s)
    except BaseException as exc:  # the orchestrator must hear about every failure
        with contextlib.suppress(OSError):
            os.set_blocking(conn.fileno(), True)
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


class _Control:
    """What the orchestrator says to a subscriber worker over the pipe.

    "stop" ends the measurement (the worker then sends its result); "close" lets it close
    its connections. They are separate so that the server's work on many disconnects
    (the bridge's `presence` events) stays out of the CPU time charged to the measurement.
    A closed pipe means both.
    """

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._loop = asyncio.get_running_loop()
        self.stop = asyncio.Event()
        self.close = asyncio.Event()
        self._loop.add_reader(conn.fileno(), self._readable)

    def _readable(self) -> None:
        try:
            said = self._conn.recv()
        except (EOFError, OSError):
            said = "close"
        self.stop.set()
        if said == "close":
            self.close.set()
            self._loop.remove_reader(self._conn.fileno())

    def send(self, message: Any) -> None:
        """Send on the pipe in blocking mode (libuv made it non-blocking: a large message
        would be cut short), then hand it back to the loop."""
        fd = self._conn.fileno()
        os.set_blocking(fd, True)
        try:
            self._conn.send(message)
        finally:
            os.set_blocking(fd, False)


# ---------------------------------------------------------------------------- subscribers


@dataclass(frozen=True)
class SubscribeJob:
    """Open one WebSocket per entry of `sessions` and count (and time) the tagged messages.

    Only messages whose index is at least `count_from` count (earlier ones are warm-up).
    `expect_total` is how many counted frames all connections together should receive; the
    worker ends once they have (0: it waits for "stop"). `hold`: after sending its result,
    keep the connections open until the orchestrator says "close" (so that the server's work
    on the disconnects is not charged to the measurement).
    """

    port: int
    sessions: tuple[str, ...]
    tag: str
    latency: bool = False
    count_from: int = 0
    expect_total: int = 0
    timeout_s: float = 120.0
    connect_parallel: int = 64
    connect_timeout_s: float = 30.0
    cpus: tuple[int, ...] = ()
    hold: bool = False


@dataclass
class _Tally:
    """What all connections of one subscriber worker received."""

    frames: int = 0
    other_frames: int = 0
    out_of_order: int = 0
    first_rx: float = 0.0
    last_rx: float = 0.0
    latencies: array[float] = field(default_factory=lambda: array("d"))
    done: asyncio.Event = field(default_factory=asyncio.Event)


class _Subscriber:
    """Per-connection state; `on_text` runs once per received text frame."""

    __slots__ = ("_job", "_stamp", "_tally", "last_seq")

    def __init__(self, job: SubscribeJob, stamp: re.Pattern[bytes], tally: _Tally) -> None:
        self._job = job
        self._stamp = stamp
        self._tally = tally
        self.last_seq = -1

    def on_text(self, payload: bytes, now: float) -> None:
        m = self._stamp.search(payload)
        if m is None:
            self._tally.other_frames += 1  # hello, welcome message, presence: not ours
            return
        seq_m = _SEQ_RE.search(payload)
        seq = int(seq_m[1]) if seq_m else -1
        tally = self._tally
        if seq <= self.last_seq:  # guarantee 2: each message once, in seq order
            tally.out_of_order += 1
        self.last_seq = seq
        if int(m[1]) < self._job.count_from:
            return
        if not tally.frames:
            tally.first_rx = now
        tally.frames += 1
        tally.last_rx = now
        if self._job.latency:
            tally.latencies.append(now - float(m[2]))
        if tally.frames == self._job.expect_total:
            tally.done.set()


async def _until_quiet(tally: _Tally, quiet_s: float = 0.3, limit_s: float = 15.0) -> None:
    """Wait until no frame arrived for `quiet_s` (at most `limit_s`).

    Joining can make the server send frames to those already connected (the bridge tells
    every subscriber of a session about each newcomer with `presence`); reading them must
    not overlap the measurement that follows.
    """
    deadline = time.monotonic() + limit_s
    seen = -1
    while tally.other_frames != seen and time.monotonic() < deadline:
        seen = tally.other_frames
        await asyncio.sleep(quiet_s)


async def _subscribe(job: SubscribeJob, conn: Connection) -> None:
    stamp = _stamp_re(job.tag)
    tally = _Tally()
    gate = asyncio.Semaphore(job.connect_parallel)  # don't overflow the server's accept backlog
    clients: list[WsClient] = []
    failures: Counter[str] = Counter()

    async def connect(session_id: str) -> None:
        async with gate:
            try:
                sub = _Subscriber(job, stamp, tally)
                path = ws_path(session_id)
                clients.append(
                    await open_ws(job.port, path, sub.on_text, within=job.connect_timeout_s)
                )
            except (OSError, WsError, TimeoutError) as exc:
                failures[f"{type(exc).__name__}: {exc}"[:160]] += 1

    await asyncio.gather(*(connect(s) for s in job.sessions))
    await _until_quiet(tally)
    conn.send(("ready", {"connected": len(clients), "failed": sum(failures.values()),
                         "errors": dict(failures.most_common(3))}))
    control = _Control(conn)  # after `ready`: it makes the pipe non-blocking
    waiters = [asyncio.ensure_future(control.stop.wait())]
    if job.expect_total:
        waiters.append(asyncio.ensure_future(tally.done.wait()))
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
    # Connections the server closed while we were listening (4000 = too slow, ...).
    closes = Counter(c.close_code for c in clients if c.closed.done())
    control.send(("result", {
        "connected": len(clients),
        "frames": tally.frames,
        "other_frames": tally.other_frames,
        "out_of_order": tally.out_of_order,
        "first_rx": tally.first_rx,
        "last_rx": tally.last_rx,
        "latencies": tally.latencies.tobytes(),
        "closes": {str(k): v for k, v in closes.items()},
    }))
    if job.hold:
        await control.close.wait()  # bounded by the job's timeout, like everything here
    for c in clients:
        c.close()
    if clients:
        await asyncio.wait([c.closed for c in clients], timeout=5.0)
    return None  # the result went out before the connections closed


def subscriber_main(job: SubscribeJob, conn: Connection) -> None:
    """Process entry point for a subscriber worker."""
    _worker(job, conn, _subscribe)


# ----------------------------------------------------------------------------- publishers


@dataclass(frozen=True)
class Target:
    """A server to publish to: its port, the sessions to go round, the tag of its messages."""

    port: int
    sessions: tuple[str, ...]
    tag: str


def slice_owner(idx: int, rate: float, slice_s: float, targets: int) -> int:
    """Which target message `idx` of a "rate" publisher goes to: the targets take turns,
    each for `slice_s` seconds, so that whatever else the machine does in the meantime
    falls on all of them alike."""
    return int(idx / (rate * slice_s)) % targets if targets > 1 else 0


@dataclass(frozen=True)
class PublishJob:
    """POST tagged messages round-robin over `sessions` of the server on `port`, on
    `connections` keep-alive connections (per target).

    Modes:
    - "rate": `count` messages, open loop at `rate` per second. With `alternates`, further
      targets take turns with the first in slices of `slice_s` seconds (see `slice_owner`),
      and each target's messages are numbered from 0 (the latency rows).
    - "window": `count` messages to `sessions[0]`, with at most `window` published but not
      yet seen by a pacer subscription this worker holds on the session (fan-out row): the
      server is kept busy without piling up an unbounded backlog in its buffers.
    - "flood": each connection POSTs back to back from `start_at` (a shared monotonic time)
      for `warm_s + measure_s`; answers that arrive inside the last `measure_s` count.

    `hold`: after sending its result, stay until the orchestrator says "close" (so that it
    can still read this process's CPU time).
    """

    port: int
    sessions: tuple[str, ...]
    tag: str
    mode: str
    connections: int = 8
    count: int = 0
    rate: float = 0.0
    window: int = 0
    start_at: float = 0.0
    warm_s: float = 0.0
    measure_s: float = 0.0
    timeout_s: float = 120.0
    cpus: tuple[int, ...] = ()
    alternates: tuple[Target, ...] = ()
    slice_s: float = 0.25
    hold: bool = False

    @property
    def targets(self) -> tuple[Target, ...]:
        """The first target (`port`, `sessions`, `tag`) and the alternates."""
        return (Target(self.port, self.sessions, self.tag), *self.alternates)


class _Publisher:
    """Builds the requests for one target and counts their outcomes."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.statuses: Counter[str] = Counter()
        self._paths = [_post_path(s) for s in target.sessions]

    def request(self, idx: int) -> tuple[bytes, float]:
        """The request for message `idx`, stamped now; returns it and the stamp."""
        now = time.monotonic()
        body = (
            f'{{"role":"ai","content":"bench|{self.target.tag}|{idx}|{now:.6f}|{FILLER}"}}'
        ).encode()
        return post_bytes(self.target.port, self._paths[idx % len(self._paths)], body), now

    async def send(self, conn: HttpConn, idx: int) -> tuple[HttpConn, bool, float]:
        """POST message `idx` on `conn` (reopened if the server closed it).

        Returns the connection to reuse, whether the answer was 200, and the publish time.
        """
        if conn.lost:
            conn = await open_http(self.target.port)
        raw, stamp = self.request(idx)
        try:
            status, _ = await conn.request(raw)
        except HttpError as exc:
            self.statuses[type(exc).__name__] += 1
            return conn, False, stamp
        self.statuses[str(status)] += 1
        return conn, status == 200, stamp


async def _publish_rate(job: PublishJob) -> dict[str, Any]:
    pubs = [_Publisher(t) for t in job.targets]
    pools: list[asyncio.Queue[HttpConn]] = []
    for t in job.targets:
        pool: asyncio.Queue[HttpConn] = asyncio.Queue()
        for _ in range(job.connections):
            pool.put_nowait(await open_http(t.port))
        pools.append(pool)
    lags = array("d")
    numbers = [0] * len(pubs)  # next message number, per target
    t0 = time.monotonic() + 0.05

    async def one(k: int, idx: int, due: float) -> None:
        conn = await pools[k].get()
        try:
            conn, _, stamp = await pubs[k].send(conn, idx)
            lags.append(stamp - due)
        finally:
            pools[k].put_nowait(conn)

    tasks = []
    for i in range(job.count):
        due = t0 + i / job.rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        k = slice_owner(i, job.rate, job.slice_s, len(pubs))
        tasks.append(asyncio.create_task(one(k, numbers[k], due)))
        numbers[k] += 1
    await asyncio.gather(*tasks)
    for pool in pools:
        while not pool.empty():
            pool.get_nowait().close()
    ordered = sorted(lags)
    merged: Counter[str] = Counter()
    for p in pubs:
        merged.update(p.statuses)
    return {"published": len(lags), "statuses": dict(merged),
            "statuses_by_target": [dict(p.statuses) for p in pubs],
            "send_lag_p99_ms": 1000 * ordered[int(0.99 * (len(ordered) - 1))] if ordered else 0.0}


async def _publish_window(job: PublishJob) -> dict[str, Any]:
    target = job.targets[0]
    pub = _Publisher(target)
    stamp = _stamp_re(target.tag)
    slots = asyncio.Semaphore(job.window)
    progress = asyncio.Event()
    seen = 0

    def on_pacer(payload: bytes, _now: float) -> None:
        nonlocal seen
        if stamp.search(payload) is not None:
            seen += 1
            slots.release()
            progress.set()

    pacer = await open_ws(target.port, ws_path(target.sessions[0]), on_pacer)
    pool: asyncio.Queue[HttpConn] = asyncio.Queue()
    for _ in range(job.connections):
        pool.put_nowait(await open_http(target.port))
    pub_times = array("d", [0.0] * job.count)

    async def one(idx: int) -> None:
        conn = await pool.get()
        try:
            conn, _, pub_times[idx] = await pub.send(conn, idx)
        finally:
            pool.put_nowait(conn)

    tasks = []
    stalled = False
    for idx in range(job.count):
        try:
            async with asyncio.timeout(STALL_S):
                await slots.acquire()
        except TimeoutError:
            stalled = True  # the pacer saw nothing for STALL_S: report, don't hang
            break
        tasks.append(asyncio.create_task(one(idx)))
    await asyncio.gather(*tasks)
    with contextlib.suppress(TimeoutError):
        while seen < len(tasks) and not pacer.closed.done():
            progress.clear()
            async with asyncio.timeout(STALL_S):  # let the pacer see the last ones
                await progress.wait()
    pacer_close = pacer.close_code if pacer.closed.done() else None
    pacer.close()
    while not pool.empty():
        pool.get_nowait().close()
    return {"published": len(tasks), "statuses": dict(pub.statuses), "stalled": stalled,
            "pub_times": pub_times.tobytes(), "pacer_seen": seen, "pacer_close": pacer_close}


async def _publish_flood(job: PublishJob) -> dict[str, Any]:
    pub = _Publisher(job.targets[0])
    conns = [await open_http(pub.target.port) for _ in range(job.connections)]
    count_start = job.start_at + job.warm_s
    end = count_start + job.measure_s
    counter = itertools.count()
    counted = 0
    sent_ok = 0

    async def loop(conn: HttpConn) -> None:
        nonlocal counted, sent_ok
        await asyncio.sleep(max(0.0, job.start_at - time.monotonic()))
        while time.monotonic() < end:
            conn, ok, _ = await pub.send(conn, next(counter))
            sent_ok += ok
            if ok and count_start <= time.monotonic() < end:
                counted += 1
        conn.close()

    await asyncio.gather(*(loop(c) for c in conns))
    return {"counted": counted, "published": sent_ok, "statuses": dict(pub.statuses)}


async def _publish(job: PublishJob, conn: Connection) -> dict[str, Any]:
    modes = {"rate": _publish_rate, "window": _publish_window, "flood": _publish_flood}
    return await modes[job.mode](job)


def publisher_main(job: PublishJob, conn: Connection) -> None:
    """Process entry point for a publisher worker."""
    _worker(job, conn, _publish)
