"""A bounded soak: the bridge under a steady load for N minutes; are memory and fds flat?

    python -m bench.soak                 # 10 minutes (the figure docs/security.md reports)
    python -m bench.soak --minutes 1     # a quick run

One bridge process with the SQLite store (a fresh file in a temporary folder) on a free
127.0.0.1 port. One asyncio client process drives it:

- publishers: `--rate` messages per second (default 100) spread round robin over
  `--sessions` sessions (default 50), POSTed on a fixed schedule (the k-th message is due at
  start + k/rate, so a slow answer does not lower the rate; at most `--in-flight` requests
  are outstanding, more would only measure the client);
- subscribers: `--subscribers` slots (default 100, two per session) that connect, read for
  a random 2-15 s, disconnect and reconnect with `after` = the last seq they saw. Every slot
  checks that seqs arrive exactly once, in order, with no gap, across its reconnects
  (guarantees 2 and 3 of the protocol), so churn is exercised, not just idle sockets;
- a sampler: every `--sample-s` seconds the bridge process's RSS, open file descriptors
  and threads (psutil), and its open WebSocket count (`bridge_ws_connections` of /metrics).

The report is one table (start / median / end / max, and the least-squares slope per
minute over the samples after a warm-up) and a verdict:

- memory is flat if RSS grew by less than max(10 MiB, 10 % of its median) over the
  measured window, judged both by the slope and by the end minus the start;
- file descriptors are flat if those that are not TCP sockets (the database and its WAL,
  pipes, event fds: what a leak would pile up) ended within 3 of where they started with
  a slope under 3 over the window, and the TCP sockets stayed within what the client holds
  (open WebSockets + the HTTP pool + slack for connections being set up or torn down) with
  none left in CLOSE_WAIT (a socket whose peer left but that the bridge never closed).

Exit status 0 when both are flat and the load itself had no errors, 1 otherwise.

The load is bounded by `--minutes`; every wait has a timeout; traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from tests.support import RunningBridge, free_port

__all__ = ["Sample", "SoakResult", "main", "run_soak", "summarise"]

MIB = 1024 * 1024
_WS_GAUGE = re.compile(r"^bridge_ws_connections\s+([0-9.e+]+)\s*$", re.MULTILINE)


@dataclass
class Sample:
    """One reading of the bridge process."""

    t: float  # seconds since the load started
    rss: int  # bytes
    fds: int
    threads: int
    tcp: int  # the process's TCP sockets (the listening one included)
    close_wait: int  # of which closed by the peer but not yet by the bridge
    sockets: int  # open WebSocket subscriptions, from /metrics (-1 if unread)


@dataclass
class Load:
    """What the client did and what went wrong; every counter must end as expected."""

    published: int = 0
    publish_errors: int = 0
    publish_latency_ms: list[float] = field(default_factory=list)
    late_starts: int = 0  # POSTs that could not start on time (in-flight cap reached)
    connects: int = 0
    connect_errors: int = 0
    received: int = 0
    gaps: int = 0  # a seq skipped (a lost message)
    repeats: int = 0  # a seq seen again or out of order (a duplicate)
    unexpected_closes: int = 0
    error_events: int = 0
    first_errors: list[str] = field(default_factory=list)

    def note(self, what: str) -> None:
        """Keep the first few error descriptions for the report."""
        if len(self.first_errors) < 10:
            self.first_errors.append(what)


@dataclass
class SoakResult:
    """Everything `main` prints, also written as JSON with `--json`."""

    minutes: float
    rate: float
    sessions: int
    subscribers: int
    samples: list[Sample]
    load: Load
    warmup_s: float
    rows: list[dict[str, Any]]
    memory_flat: bool
    fds_flat: bool


class Bridge:
    """`python -m bridge serve` with a fresh SQLite file (a `tests.support.RunningBridge`);
    stopped, and the file removed, on exit, whatever happened."""

    def __init__(self, log_path: Path, env: dict[str, str]) -> None:
        self._tmp = Path(tempfile.mkdtemp(prefix="bridge-soak-"))
        self._running = RunningBridge(
            port=free_port(),
            store=f"sqlite:///{self._tmp / 'soak.db'}",  # absolute path: four slashes
            env=env,
            log_path=log_path,
        )
        self.port = self._running.port
        self.url = self._running.url
        self.ws_url = self._running.ws_url
        self.ps: psutil.Process | None = None

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        """The bridge process, once started."""
        return self._running.proc

    def __enter__(self) -> Bridge:
        try:
            self._running.start(timeout=30)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        assert self._running.proc is not None
        self.ps = psutil.Process(self._running.proc.pid)
        return self

    def __exit__(self, *exc: object) -> None:
        self._running.stop()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def sample(self, t: float, sockets: int) -> Sample:
        """RSS, fds, TCP sockets and threads of the bridge process now."""
        assert self.ps is not None
        with self.ps.oneshot():
            conns = self.ps.net_connections(kind="tcp")
            return Sample(
                t,
                self.ps.memory_info().rss,
                self.ps.num_fds(),
                self.ps.num_threads(),
                len(conns),
                sum(c.status == psutil.CONN_CLOSE_WAIT for c in conns),
                sockets,
            )


def _session(k: int) -> str:
    return f"soak-{k:03d}"


async def _publisher(
    http: httpx.AsyncClient,
    rate: float,
    sessions: int,
    in_flight: int,
    end: float,
    load: Load,
) -> None:
    """POST on a fixed schedule until `end`; each POST runs as its own task (bounded)."""
    gate = asyncio.Semaphore(in_flight)
    tasks: set[asyncio.Task[None]] = set()
    start = time.monotonic()
    filler = "lorem ipsum dolor sit amet, consectetur adipiscing elit " * 2

    async def post(k: int) -> None:
        t0 = time.monotonic()
        try:
            resp = await http.post(
                f"/api/v1/sessions/{_session(k % sessions)}/messages",
                json={"role": "ai", "content": f"soak {k} {filler}"},
            )
            if resp.status_code == 200:
                load.published += 1
                load.publish_latency_ms.append((time.monotonic() - t0) * 1000)
            else:
                load.publish_errors += 1
                load.note(f"POST answered {resp.status_code}: {resp.text[:120]}")
        except httpx.HTTPError as exc:
            load.publish_errors += 1
            load.note(f"POST failed: {exc!r}")
        finally:
            gate.release()

    k = 0
    while True:
        due = start + k / rate
        if due >= end:
            break
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)  # pacing: the schedule, not a synchronisation
        if gate.locked():
            load.late_starts += 1
        await gate.acquire()
        task = asyncio.create_task(post(k))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        k += 1
    if tasks:
        await asyncio.wait(tasks, timeout=30)


async def _subscriber(
    ws_url: str, session: str, end: float, load: Load, rng: random.Random
) -> None:
    """Connect, read for a while, leave, reconnect with `after`; check every seq."""
    last = 0  # the last seq this slot saw: its `after` on the next connection
    while time.monotonic() < end - 1:
        stay = min(rng.uniform(2, 15), end - time.monotonic())
        url = f"{ws_url}/api/v1/sessions/{session}/ws?after={last}"
        try:
            async with connect(url, compression=None, open_timeout=10, close_timeout=5) as ws:
                load.connects += 1
                stop_at = time.monotonic() + stay
                while (left := stop_at - time.monotonic()) > 0:
                    try:
                        raw = await asyncio.wait_for(ws.recv(), left)
                    except TimeoutError:
                        break
                    event = json.loads(raw)
                    kind = event.get("event")
                    if kind == "message":
                        seq = int(event["seq"])
                        load.received += 1
                        if seq == last + 1:
                            last = seq
                        elif seq > last + 1:
                            load.gaps += 1
                            load.note(f"{session}: seq {seq} after {last} (gap)")
                            last = seq
                        else:
                            load.repeats += 1
                            load.note(f"{session}: seq {seq} after {last} (repeat)")
                    elif kind == "error":
                        load.error_events += 1
                        load.note(f"{session}: error event {event.get('detail')!r}")
        except ConnectionClosed as exc:
            load.unexpected_closes += 1
            load.note(f"{session}: closed by the bridge: {exc!r}")
        except (OSError, InvalidHandshake, TimeoutError) as exc:
            load.connect_errors += 1
            load.note(f"{session}: connect failed: {exc!r}")
        # A pause between visits, as a tab being reloaded: load shaping, not synchronisation.
        await asyncio.sleep(rng.uniform(0.0, 1.0))


async def _sampler(
    bridge: Bridge,
    http: httpx.AsyncClient,
    start: float,
    end: float,
    every: float,
    samples: list[Sample],
) -> None:
    """One sample now, then every `every` seconds, and a last one at `end`."""
    while True:
        sockets = -1
        with contextlib.suppress(httpx.HTTPError):
            match = _WS_GAUGE.search((await http.get("/metrics")).text)
            sockets = int(float(match.group(1))) if match else -1
        samples.append(bridge.sample(time.monotonic() - start, sockets))
        now = time.monotonic()
        if now >= end:
            return
        await asyncio.sleep(min(every, end - now))  # the sampling period


async def _drive(bridge: Bridge, args: argparse.Namespace, load: Load) -> list[Sample]:
    rng = random.Random(args.seed)
    samples: list[Sample] = []
    # Idle connections expire before uvicorn's 5 s keep-alive timeout: otherwise the
    # server may close one just as the client reuses it, a client-side race (ReadError)
    # that says nothing about the bridge.
    limits = httpx.Limits(max_connections=args.in_flight, keepalive_expiry=2.0)
    async with (
        httpx.AsyncClient(base_url=bridge.url, timeout=30, limits=limits) as http,
        httpx.AsyncClient(base_url=bridge.url, timeout=10) as probe,
    ):
        # Every session exists (seq 1 = the welcome) before any slot subscribes with after=0.
        for k in range(args.sessions):
            resp = await http.post(f"/api/v1/sessions/{_session(k)}")
            resp.raise_for_status()
        start = time.monotonic()
        end = start + args.minutes * 60
        subscribers = [
            _subscriber(
                bridge.ws_url, _session(i % args.sessions), end, load, random.Random(rng.random())
            )
            for i in range(args.subscribers)
        ]
        async with asyncio.timeout(args.minutes * 60 + 120):  # the whole run is bounded
            await asyncio.gather(
                _publisher(http, args.rate, args.sessions, args.in_flight, end, load),
                # The last sample is taken 2 s before the load stops: at the very end the
                # subscribers are leaving, which is not the steady state being judged.
                _sampler(bridge, probe, start, end - 2, args.sample_s, samples),
                *subscribers,
            )
    return samples


def _slope_per_min(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) points, per minute."""
    if len(points) < 2:
        return 0.0
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    if var == 0:
        return 0.0
    return 60 * sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var


def _points(samples: list[Sample], value: Callable[[Sample], float]) -> list[tuple[float, float]]:
    return [(s.t, value(s)) for s in samples]


def summarise(
    samples: list[Sample], warmup_s: float, http_pool: int
) -> tuple[list[dict[str, Any]], bool, bool]:
    """Table rows and the two verdicts (memory flat, fds flat).

    The warm-up (imports finishing, SQLite's page cache and the allocator's arenas filling,
    the first subscribers arriving) is left out of slope and verdict, not out of max.
    Sockets come and go with the load (subscribers churn, the HTTP pool grows and shrinks),
    so fds are judged in two parts: fds that are not TCP sockets (files, the database, pipes,
    event fds) must stay flat; TCP sockets must stay within what the client holds (open
    WebSockets + the HTTP pool + the listening socket + slack for connections being set up
    or torn down) and none may linger in CLOSE_WAIT (a socket the bridge forgot to close).
    """
    measured = [s for s in samples if s.t >= warmup_s] or samples
    window_min = max((measured[-1].t - measured[0].t) / 60, 1e-9)
    series: dict[str, Callable[[Sample], float]] = {
        "RSS (MiB)": lambda s: s.rss / MIB,
        "open fds": lambda s: float(s.fds),
        "fds, not TCP": lambda s: float(s.fds - s.tcp),
        "TCP sockets": lambda s: float(s.tcp),
        "  CLOSE_WAIT": lambda s: float(s.close_wait),
        "WebSockets open": lambda s: float(s.sockets),
        "TCP - WebSockets": lambda s: float(s.tcp - s.sockets),
        "threads": lambda s: float(s.threads),
    }
    rows = []
    for name, value in series.items():
        every = [value(s) for s in samples]
        points = _points(measured, value)
        ys = [p[1] for p in points]
        rows.append(
            {
                "metric": name,
                "start": ys[0],
                "median": statistics.median(ys),
                "end": ys[-1],
                "max": max(every),
                "slope_per_min": _slope_per_min(points),
                "window_min": window_min,
            }
        )
    by = {r["metric"]: r for r in rows}
    rss = by["RSS (MiB)"]
    allowed = max(10.0, 0.10 * rss["median"])
    memory_flat = (
        rss["slope_per_min"] * window_min < allowed and rss["end"] - rss["start"] < allowed
    )
    files = by["fds, not TCP"]
    fds_flat = (
        abs(files["slope_per_min"]) * window_min < 3
        and files["end"] - files["start"] <= 3
        # + the probe's connection and the listener, + 20 connections being set up or closed
        and max(value for _, value in _points(measured, series["TCP - WebSockets"]))
        <= http_pool + 2 + 20
        and by["  CLOSE_WAIT"]["end"] <= 2
    )
    return rows, memory_flat, fds_flat


def _render(result: SoakResult) -> str:
    load = result.load
    lat = sorted(load.publish_latency_ms) or [float("nan")]
    p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]  # noqa: E731 - a local percentile
    lines = [
        f"soak: {result.minutes:g} min, {result.rate:g} msg/s over {result.sessions} sessions, "
        f"{result.subscribers} subscriber slots reconnecting every 2-15 s (SQLite store)",
        f"published {load.published} (errors {load.publish_errors}, late starts "
        f"{load.late_starts}); POST latency p50 {p(0.5):.1f} ms, p99 {p(0.99):.1f} ms",
        f"subscriber connects {load.connects} (errors {load.connect_errors}, closed by the "
        f"bridge {load.unexpected_closes}); messages received {load.received}; gaps "
        f"{load.gaps}, repeats {load.repeats}, error events {load.error_events}",
        f"samples: {len(result.samples)} every ~{result.samples[1].t - result.samples[0].t:.0f} s"
        if len(result.samples) > 1
        else "samples: fewer than 2",
        f"slope and verdict over t >= {result.warmup_s:.0f} s "
        f"({result.rows[0]['window_min']:.1f} min)",
        "",
        f"{'metric':<18}{'start':>10}{'median':>10}{'end':>10}{'max':>10}{'slope/min':>12}",
    ]
    for r in result.rows:
        lines.append(
            f"{r['metric']:<18}{r['start']:>10.1f}{r['median']:>10.1f}{r['end']:>10.1f}"
            f"{r['max']:>10.1f}{r['slope_per_min']:>+12.2f}"
        )
    lines += [
        "",
        f"memory: {'flat' if result.memory_flat else 'NOT flat'}; "
        f"file descriptors: {'flat' if result.fds_flat else 'NOT flat'}",
    ]
    if load.first_errors:
        lines.append("first errors:")
        lines += [f"  {e}" for e in load.first_errors]
    return "\n".join(lines)


def run_soak(args: argparse.Namespace) -> SoakResult:
    """Start the bridge, drive it for `args.minutes`, stop it, and judge the samples."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    log_dir = Path(args.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"soak-{int(time.time())}.log"
    load = Load()
    with Bridge(log_path, env) as bridge:
        samples = asyncio.run(_drive(bridge, args, load))
        if bridge.proc is not None and bridge.proc.poll() is not None:
            load.note(f"the bridge exited with {bridge.proc.returncode}; see {log_path}")
            load.unexpected_closes += 1
    warmup = args.warmup_s if args.warmup_s is not None else min(60.0, args.minutes * 60 / 6)
    rows, memory_flat, fds_flat = summarise(samples, warmup, args.in_flight)
    return SoakResult(
        args.minutes,
        args.rate,
        args.sessions,
        args.subscribers,
        samples,
        load,
        warmup,
        rows,
        memory_flat,
        fds_flat,
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=10.0, help="duration of the load (10)")
    p.add_argument("--rate", type=float, default=100.0, help="messages per second (100)")
    p.add_argument("--sessions", type=int, default=50, help="sessions published to (50)")
    p.add_argument("--subscribers", type=int, default=100, help="subscriber slots (100)")
    p.add_argument("--in-flight", type=int, default=32, help="max outstanding POSTs (32)")
    p.add_argument("--sample-s", type=float, default=5.0, help="sampling period in s (5)")
    p.add_argument(
        "--warmup-s",
        type=float,
        default=None,
        help="left out of slope and verdict (default: 1/6 of the run, at most 60)",
    )
    p.add_argument("--seed", type=int, default=1, help="seed of the subscribers' timings")
    p.add_argument("--json", default=None, help="also write the samples and figures here")
    p.add_argument(
        "--log-dir",
        default=str(Path(tempfile.gettempdir()) / "bridge-soak-logs"),
        help="where the bridge's log goes",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the soak and print the table; 0 if memory and fds are flat and nothing failed."""
    args = _parser().parse_args(argv)
    if args.minutes <= 0 or args.rate <= 0 or args.sessions < 1 or args.subscribers < 0:
        print("minutes and rate must be positive, sessions at least 1", file=sys.stderr)
        return 2
    result = run_soak(args)
    print(_render(result))
    if args.json:
        Path(args.json).write_text(json.dumps(asdict(result), indent=1))
    load = result.load
    clean = not (
        load.publish_errors
        or load.gaps
        or load.repeats
        or load.error_events
        or load.unexpected_closes
        or load.connect_errors
    )
    return 0 if result.memory_flat and result.fds_flat and clean else 1


if __name__ == "__main__":
    sys.exit(main())
