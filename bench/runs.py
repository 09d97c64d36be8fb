"""`python -m bench.runs`: the bridge's runner (issue 14) against calling `lfx serve` directly.

One `lfx serve` of tests/flows (its `stream_chat` flow streams "You said: <input>" in a few
tokens with no delay) and one bridge process (`--store memory://`, `--langflow-url` that
server, BRIDGE_RUNS_MAX = the session count) are started once. Two clients, in this
process, on the same event loop, take turns:

- **direct** (the reference): `POST /api/v2/workflows` to lfx with the AG-UI body the
  runner sends (`RunningLfx.run_body`), httpx.AsyncClient, reading the SSE: first
  non-empty `TEXT_MESSAGE_CONTENT` (latency) and `RUN_FINISHED` (a reply).
- **bridge**: one WebSocket per session (websockets, no compression) opened beforehand,
  then `POST /api/v1/sessions/{sid}/messages` (role user) with httpx.AsyncClient: first
  `stream.delta` frame (latency) and `run.end` (a reply; outcome must be `done`).

Rows (issue 14, "Measured"):

- time to the first token, one session, one message at a time: the two clients alternate
  message by message (ABAB; which side goes first flips every repetition). Per repetition
  p50 and p99 of each side and their difference; the table gives medians over repetitions.
  Target: the bridge adds <= 5 ms at p50 and <= 20 ms at p99.
- replies per second, 50 sessions each with one message in flight (closed loop): one
  window per client per repetition, the order flipping every repetition (AB, BA, AB), each
  window warmed up, then counted, then drained before the other starts. Target: the
  bridge >= 0.9x direct.

Diagnostics under the targets: where the bridge's first token comes from (POST answered,
`run.start` seen, `run.start` to the first delta), whole-reply time, and CPU per reply of
lfx, the bridge and the client process during the throughput windows, with what every
other process on the machine used meanwhile and the load average.

`run_bench(quick=..., reps=...)` returns a `RunsReport` (`rows`, `notes`, `render()`),
for `python -m bench` to include.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import psutil
from websockets.asyncio.client import ClientConnection, connect

from tests.lfx_support import RunningLfx, lfx_serving
from tests.support import ROOT, RunningBridge, bridge_env, free_port

__all__ = ["RunsPlan", "RunsReport", "main", "run_bench"]

LOG_DIR = ROOT / "bench" / "results" / "logs"
FLOW = "stream_chat"
TEXT = "hello there, bridge"  # "You said: hello there, bridge": 5 content deltas from lfx
P50_TARGET_MS = 5.0
P99_TARGET_MS = 20.0
RATE_TARGET = 0.9
clock = time.perf_counter  # one clock for both clients (same process)


@dataclass(frozen=True)
class RunsPlan:
    """Sizes of one run of the bench.

    Throughput windows: with 50 messages in flight and lfx answering ~20 a second on this
    machine, each session waits ~2.5 s for its reply, so a window needs a warm-up of about
    one such cycle (all sessions start at once) and several cycles counted; after it, the
    runs in flight are waited for (drained) before the other client's window starts.
    """

    reps: int = 3
    lat_pairs: int = 150  # messages per side per repetition (one direct, one bridge: a pair)
    lat_warmup: int = 10  # pairs before the first repetition, not counted
    lat_gap_s: float = 0.005  # pause after each message's reply is complete
    sessions: int = 50  # concurrency of the throughput row
    tp_windows: int = 1  # windows per side per repetition; the order flips every repetition
    tp_warmup_s: float = 2.5  # of each window, not counted
    tp_window_s: float = 6.0  # counted part of each window

    @classmethod
    def full(cls) -> RunsPlan:
        return cls()

    @classmethod
    def quick(cls) -> RunsPlan:
        return cls(reps=1, lat_pairs=60, lat_warmup=6, tp_warmup_s=2.0, tp_window_s=4.0)


# ----------------------------------------------------------------------------- samples


@dataclass
class Sample:
    """One message: times from `clock()` (seconds)."""

    t0: float  # just before the POST
    first: float = math.nan  # first token at the client
    end: float = math.nan  # RUN_FINISHED / run.end at the client
    posted: float = math.nan  # bridge only: its POST answered
    run_start: float = math.nan  # bridge only: run.start frame
    error: str = ""

    def ms(self, a: str, b: str) -> float:
        return 1000.0 * (float(getattr(self, b)) - float(getattr(self, a)))


class RunFailedError(Exception):
    """A run that did not end in a reply."""


# ----------------------------------------------------------------------------- clients


class Direct:
    """The reference client: lfx's `/api/v2/workflows`, as the runner calls it."""

    name = "direct"

    def __init__(self, lfx: RunningLfx, concurrency: int) -> None:
        self._lfx = lfx
        self._url = f"{lfx.url}/api/v2/workflows"
        self._headers = {**lfx.headers, "accept": "text/event-stream"}
        self._http = httpx.AsyncClient(
            timeout=30.0,
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
            trust_env=False,
        )

    async def open(self, session: str) -> None:
        """Nothing to open: lfx needs no subscription."""

    async def close_sessions(self, sessions: Sequence[str]) -> None:
        """Nothing to close."""

    async def aclose(self) -> None:
        await self._http.aclose()

    async def send(self, session: str, text: str) -> Sample:
        body = self._lfx.run_body(FLOW, text, session)
        s = Sample(clock())
        async with self._http.stream(
            "POST", self._url, json=body, headers=self._headers
        ) as response:
            if response.status_code != 200:
                await response.aread()
                raise RunFailedError(f"lfx answered {response.status_code}: {response.text[:200]}")
            async for line in response.aiter_lines():  # read to its end: keep-alive
                if not line.startswith("data:"):
                    continue
                event = json.loads(line[5:])
                kind = event.get("type")
                if kind == "TEXT_MESSAGE_CONTENT":
                    if math.isnan(s.first) and event.get("delta"):
                        s.first = clock()
                elif kind == "RUN_FINISHED":
                    s.end = clock()
                elif kind == "RUN_ERROR":
                    raise RunFailedError(f"RUN_ERROR: {event.get('message')}")
        if math.isnan(s.end) or math.isnan(s.first):
            raise RunFailedError("the stream ended without a reply")
        return s


class _Subscription:
    """One session's WebSocket; its reader stamps the frames of the run in flight."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.sample: Sample | None = None
        self.done: asyncio.Future[None] | None = None
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(Exception):
            async for raw in self.ws:
                now = clock()
                s, done = self.sample, self.done
                if s is None or done is None or done.done():
                    continue
                # Cheap peek first: most frames are deltas, one decode each is what a
                # client pays anyway.
                event = json.loads(raw)
                kind = event.get("event")
                if kind == "stream.delta":
                    if math.isnan(s.first):
                        s.first = now
                elif kind == "run.start":
                    s.run_start = now
                elif kind == "run.end":
                    s.end = now
                    if event.get("outcome") != "done":
                        s.error = f"run.end {event.get('outcome')}: {event.get('reason')}"
                    done.set_result(None)
        if self.done is not None and not self.done.done():
            self.done.set_exception(RunFailedError("the WebSocket closed"))

    async def aclose(self) -> None:
        await self.ws.close()
        self.reader.cancel()
        await asyncio.gather(self.reader, return_exceptions=True)


class Bridged:
    """The bridge's client: a tab's WebSocket per session, a POST per user message."""

    name = "bridge"

    def __init__(self, bridge: RunningBridge, concurrency: int) -> None:
        self._bridge = bridge
        self._http = httpx.AsyncClient(
            base_url=bridge.url,
            timeout=30.0,
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
            trust_env=False,
        )
        self._subs: dict[str, _Subscription] = {}

    async def open(self, session: str) -> None:
        """Subscribe to `session` and wait until its joining frames stopped coming."""
        ws = await connect(
            f"{self._bridge.ws_url}/api/v1/sessions/{session}/ws",
            compression=None,
            max_size=None,
            open_timeout=30,
        )
        await asyncio.wait_for(ws.recv(), 30)  # hello
        self._subs[session] = _Subscription(ws)

    async def close_sessions(self, sessions: Sequence[str]) -> None:
        subs = [self._subs.pop(s) for s in sessions if s in self._subs]
        await asyncio.gather(*(s.aclose() for s in subs), return_exceptions=True)

    async def aclose(self) -> None:
        await self.close_sessions(list(self._subs))
        await self._http.aclose()

    async def send(self, session: str, text: str) -> Sample:
        sub = self._subs[session]
        s = Sample(clock())
        done = asyncio.get_running_loop().create_future()
        sub.sample, sub.done = s, done
        try:
            resp = await self._http.post(
                f"/api/v1/sessions/{session}/messages", json={"role": "user", "content": text}
            )
            s.posted = clock()
            if resp.status_code != 200:
                raise RunFailedError(f"bridge answered {resp.status_code}: {resp.text[:200]}")
            await asyncio.wait_for(done, 30)
        finally:
            sub.sample = sub.done = None
        if s.error:
            raise RunFailedError(s.error)
        if math.isnan(s.first):
            raise RunFailedError("run.end without a stream.delta")
        return s


Client = Direct | Bridged


# ----------------------------------------------------------------------------- CPU


class CpuMeter:
    """CPU seconds of lfx, the bridge and this process, and of the whole machine."""

    def __init__(self, pids: dict[str, int]) -> None:
        self._procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self._procs["client"] = psutil.Process()

    @staticmethod
    def _proc_cpu(proc: psutil.Process, children: bool) -> float:
        total = 0.0
        with contextlib.suppress(psutil.Error):
            for p in (proc, *(proc.children(recursive=True) if children else ())):
                with contextlib.suppress(psutil.Error):
                    t = p.cpu_times()
                    total += t.user + t.system
        return total

    def read(self) -> dict[str, float]:
        t = psutil.cpu_times()
        busy = t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0)
        # The servers are children of this process: the client's figure is its own only.
        return {
            "machine": busy,
            "wall": time.monotonic(),
            **{name: self._proc_cpu(p, name != "client") for name, p in self._procs.items()},
        }

    @staticmethod
    def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        d = {k: after[k] - before[k] for k in before}
        ours = sum(v for k, v in d.items() if k not in ("machine", "wall"))
        d["others"] = max(0.0, d["machine"] - ours)
        return d


# ----------------------------------------------------------------------------- rounds


async def latency_round(
    clients: Sequence[Client], session: dict[str, str], pairs: int, gap_s: float
) -> dict[str, list[Sample]]:
    """`pairs` messages per client, one at a time, clients taking turns message by message."""
    out: dict[str, list[Sample]] = {c.name: [] for c in clients}
    errors: dict[str, list[str]] = {c.name: [] for c in clients}
    for n in range(pairs):
        for c in clients:
            try:
                out[c.name].append(await c.send(session[c.name], f"{TEXT} {n}"))
            except (RunFailedError, httpx.HTTPError, TimeoutError) as exc:
                errors[c.name].append(f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(gap_s)  # let each side's after-work (storing, acks) finish
    for name, errs in errors.items():
        if errs:
            print(f"  latency: {name}: {len(errs)} failed, first: {errs[0]}", file=sys.stderr)
    return out


async def throughput_window(
    client: Client, sessions: Sequence[str], warmup_s: float, window_s: float, cpu: CpuMeter
) -> dict[str, Any]:
    """Every session keeps one message in flight for warmup + window; count the replies
    completed inside the window."""
    for s in sessions:
        await client.open(s)
    loop_start = clock()
    w0, w1 = loop_start + warmup_s, loop_start + warmup_s + window_s
    ends: list[float] = []
    errors: list[str] = []
    marks: dict[str, dict[str, float]] = {}

    async def one(session: str) -> None:
        n = 0
        while clock() < w1:
            try:
                s = await client.send(session, f"{TEXT} {n}")
                ends.append(s.end)
            except (RunFailedError, httpx.HTTPError, TimeoutError) as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(0.05)  # do not spin on a failing server
            n += 1

    async def meter() -> None:
        await asyncio.sleep(max(0.0, w0 - clock()))
        marks["a"] = cpu.read()
        await asyncio.sleep(max(0.0, w1 - clock()))
        marks["b"] = cpu.read()

    await asyncio.gather(meter(), *(one(s) for s in sessions))
    await client.close_sessions(sessions)
    replies = sum(1 for t in ends if w0 <= t < w1)
    d = CpuMeter.delta(marks["a"], marks["b"])
    return {"replies": replies, "rate": replies / window_s, "errors": errors, "cpu": d}


# ----------------------------------------------------------------------------- stats


def pct(values: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) by linear interpolation, NaN if empty."""
    xs = sorted(v for v in values if math.isfinite(v))
    if not xs:
        return math.nan
    k = (len(xs) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def med(values: Sequence[float]) -> float:
    xs = [v for v in values if isinstance(v, int | float) and math.isfinite(v)]
    return statistics.median(xs) if xs else math.nan


@dataclass
class Rep:
    """The figures of one repetition."""

    lat: dict[str, dict[str, float]] = field(default_factory=dict)  # side -> figure -> value
    tp: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # side -> windows
    errors: dict[str, int] = field(default_factory=dict)


def lat_figures(samples: Sequence[Sample], bridged: bool) -> dict[str, float]:
    first = [s.ms("t0", "first") for s in samples]
    out = {
        "p50": pct(first, 0.5),
        "p99": pct(first, 0.99),
        "n": float(len(samples)),
        "whole_p50": pct([s.ms("t0", "end") for s in samples], 0.5),
    }
    if bridged:
        out["posted_p50"] = pct([s.ms("t0", "posted") for s in samples], 0.5)
        out["run_start_p50"] = pct([s.ms("t0", "run_start") for s in samples], 0.5)
        out["run_start_p99"] = pct([s.ms("t0", "run_start") for s in samples], 0.99)
        out["start_to_first_p50"] = pct([s.ms("run_start", "first") for s in samples], 0.5)
        out["start_to_first_p99"] = pct([s.ms("run_start", "first") for s in samples], 0.99)
    return out


# ----------------------------------------------------------------------------- the run


@dataclass
class RunsReport:
    """What `run_bench` measured: `rows` as data, `notes` (lines under the table)."""

    rows: list[dict[str, Any]]
    notes: list[str]
    reps: list[Rep]
    plan: RunsPlan
    seconds: float
    failed: bool

    def render(self) -> str:
        return render(self.rows) + "\n\n" + "\n".join(self.notes)


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@contextlib.contextmanager
def _servers(runs_max: int) -> Iterator[tuple[RunningLfx, RunningBridge]]:
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    with lfx_serving() as lfx:
        _stderr(f"bench.runs: lfx serve up in {lfx.startup_seconds:.1f}s at {lfx.url}")
        port = free_port()
        bridge = RunningBridge(
            port=port,
            store="memory://",
            env=bridge_env(BRIDGE_RUNS_MAX=str(runs_max), BRIDGE_LOG_LEVEL="warning"),
            log_path=LOG_DIR / f"runs-bridge-{port}.log",
            extra_args=[
                "--langflow-url",
                lfx.url,
                "--flow",
                lfx.flow_ids[FLOW],
                "--langflow-api-key",
                lfx.api_key,
            ],
        )
        try:
            bridge.start(timeout=60.0)
            yield lfx, bridge
        finally:
            bridge.stop()


def _profile(pid: int, out: Path, what: str) -> subprocess.Popen[bytes] | None:
    """py-spy record of `pid` until stopped (SIGINT), collapsed stacks in `out`."""
    exe = Path(sys.executable).with_name("py-spy")
    if not exe.exists():
        _stderr("--profile: py-spy is not installed (`pip install py-spy`): no profile")
        return None
    out.parent.mkdir(parents=True, exist_ok=True)
    _stderr(f"bench.runs: profiling {what} (pid {pid}) into {out}")
    return subprocess.Popen(
        [
            str(exe),
            "record",
            "--pid",
            str(pid),
            "--rate",
            "250",
            "--format",
            "raw",
            "--nonblocking",
            "-o",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def _measure(
    plan: RunsPlan, lfx: RunningLfx, bridge: RunningBridge, profile_dir: Path | None
) -> list[Rep]:
    assert bridge.proc is not None and lfx.proc is not None
    direct, bridged = Direct(lfx, plan.sessions), Bridged(bridge, plan.sessions)
    cpu = CpuMeter({"lfx": lfx.proc.pid, "bridge": bridge.proc.pid})
    lat_session = {"direct": "lat-direct", "bridge": "lat-bridge"}
    reps: list[Rep] = []
    profilers: list[subprocess.Popen[bytes]] = []
    try:
        await bridged.open(lat_session["bridge"])
        # Warm-up: both paths, one at a time and then all sessions at once, not counted.
        await latency_round([direct, bridged], lat_session, plan.lat_warmup, plan.lat_gap_s)
        for c in (direct, bridged):
            await throughput_window(
                c, [f"warm-{c.name}-{k}" for k in range(plan.sessions)], 0.0, 0.2, cpu
            )
        if profile_dir is not None:
            p = _profile(bridge.proc.pid, profile_dir / "bridge.txt", "the bridge")
            if p is not None:
                profilers.append(p)
        for r in range(plan.reps):
            rep = Rep()
            order: list[Client] = [direct, bridged] if r % 2 == 0 else [bridged, direct]
            t = time.monotonic()
            lat = await latency_round(order, lat_session, plan.lat_pairs, plan.lat_gap_s)
            for c in order:
                rep.lat[c.name] = lat_figures(lat[c.name], c is bridged)
                rep.errors[c.name] = rep.errors.get(c.name, 0) + plan.lat_pairs - len(lat[c.name])
            d, b = rep.lat["direct"], rep.lat["bridge"]
            _stderr(
                f"  rep {r + 1} latency {time.monotonic() - t:4.1f}s  first token p50 "
                f"direct {d['p50']:.1f} bridge {b['p50']:.1f} ms, p99 direct "
                f"{d['p99']:.1f} bridge {b['p99']:.1f} ms"
            )
            for w in range(plan.tp_windows):
                for c in order:
                    t = time.monotonic()
                    sessions = [f"tp-{c.name}-{r}-{w}-{k}" for k in range(plan.sessions)]
                    got = await throughput_window(
                        c, sessions, plan.tp_warmup_s, plan.tp_window_s, cpu
                    )
                    rep.tp.setdefault(c.name, []).append(got)
                    rep.errors[c.name] = rep.errors.get(c.name, 0) + len(got["errors"])
                    cu = got["cpu"]
                    _stderr(
                        f"  rep {r + 1} {c.name:<6} window {w + 1} "
                        f"{time.monotonic() - t:4.1f}s  {got['rate']:.1f} replies/s; "
                        f"CPU cores: lfx {cu['lfx'] / cu['wall']:.2f} bridge "
                        f"{cu['bridge'] / cu['wall']:.2f} client "
                        f"{cu['client'] / cu['wall']:.2f} others "
                        f"{cu['others'] / cu['wall']:.2f}"
                        + (
                            f"; {len(got['errors'])} failed, first: {got['errors'][0]}"
                            if got["errors"]
                            else ""
                        )
                    )
            reps.append(rep)
    finally:
        for p in profilers:
            p.send_signal(2)  # SIGINT: py-spy writes its file and exits
        for p in profilers:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        await direct.aclose()
        await bridged.aclose()
    return reps


def _row(
    label: str,
    unit: str,
    direct: Sequence[float],
    bridge: Sequence[float],
    *,
    kind: str = "",
    target: float | None = None,
) -> dict[str, Any]:
    """`kind` "diff": judged on bridge - direct (ms); "ratio": on bridge / direct. Both are
    the median of the per-repetition figures (the two sides of one repetition are measured
    within seconds of each other; repetitions a minute apart may see another machine)."""
    per_rep: list[float] = []
    for dv, bv in zip(direct, bridge, strict=False):
        if math.isfinite(dv) and math.isfinite(bv):
            if kind == "ratio" and dv:
                per_rep.append(bv / dv)
            elif kind == "diff":
                per_rep.append(bv - dv)
    dm, bm = med(direct), med(bridge)
    compare = med(per_rep) if kind else math.nan
    verdict = ""
    if target is not None:
        if not math.isfinite(compare):
            verdict = "n/a"
        elif kind == "ratio":
            verdict = "pass" if compare >= target else "FAIL"
        else:
            verdict = "pass" if compare <= target else "FAIL"
    return {
        "row": label,
        "unit": unit,
        "cells": {"direct": dm, "bridge": bm},
        "kind": kind,
        "compare": compare,
        "target": target,
        "verdict": verdict,
        "per_rep": per_rep,
    }


def table_rows(reps: Sequence[Rep], plan: RunsPlan) -> list[dict[str, Any]]:
    """The table as data (see `_row`)."""

    def lat(side: str, key: str) -> list[float]:
        return [r.lat.get(side, {}).get(key, math.nan) for r in reps]

    def tp(side: str, key: Callable[[dict[str, Any]], float]) -> list[float]:
        out = []
        for r in reps:
            windows = r.tp.get(side, [])
            out.append(statistics.fmean(key(w) for w in windows) if windows else math.nan)
        return out

    def per_reply(name: str) -> Callable[[dict[str, Any]], float]:
        return lambda w: 1e3 * w["cpu"][name] / w["replies"] if w["replies"] else math.nan

    n = plan.sessions
    rows = [
        _row(
            "first token p50, 1 session",
            "ms",
            lat("direct", "p50"),
            lat("bridge", "p50"),
            kind="diff",
            target=P50_TARGET_MS,
        ),
        _row(
            "first token p99, 1 session",
            "ms",
            lat("direct", "p99"),
            lat("bridge", "p99"),
            kind="diff",
            target=P99_TARGET_MS,
        ),
        _row(
            f"replies/s, {n} sessions at once",
            "reply/s",
            tp("direct", lambda w: w["rate"]),
            tp("bridge", lambda w: w["rate"]),
            kind="ratio",
            target=RATE_TARGET,
        ),
        # Diagnostics, no target.
        _row(
            "whole reply p50, 1 session",
            "ms",
            lat("direct", "whole_p50"),
            lat("bridge", "whole_p50"),
            kind="diff",
        ),
        _row("bridge: POST answered p50", "ms", [], lat("bridge", "posted_p50")),
        _row("bridge: run.start at the tab p50", "ms", [], lat("bridge", "run_start_p50")),
        _row("bridge: run.start at the tab p99", "ms", [], lat("bridge", "run_start_p99")),
        _row(
            "bridge: run.start -> first token p50",
            "ms",
            lat("direct", "p50"),
            lat("bridge", "start_to_first_p50"),
            kind="diff",
        ),
        _row(
            "bridge: run.start -> first token p99",
            "ms",
            lat("direct", "p99"),
            lat("bridge", "start_to_first_p99"),
            kind="diff",
        ),
        _row(
            f"lfx CPU per reply ({n} sessions)",
            "ms",
            tp("direct", per_reply("lfx")),
            tp("bridge", per_reply("lfx")),
            kind="ratio",
        ),
        _row(f"bridge CPU per reply ({n} sessions)", "ms", [], tp("bridge", per_reply("bridge"))),
        _row(
            f"client CPU per reply ({n} sessions)",
            "ms",
            tp("direct", per_reply("client")),
            tp("bridge", per_reply("client")),
            kind="ratio",
        ),
        _row(
            f"other processes' CPU ({n} sessions)",
            "cores",
            tp("direct", lambda w: w["cpu"]["others"] / w["cpu"]["wall"]),
            tp("bridge", lambda w: w["cpu"]["others"] / w["cpu"]["wall"]),
        ),
    ]
    return rows


def _fmt(value: float) -> str:
    if not math.isfinite(value):
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _cmp(kind: str, value: float) -> str:
    if not math.isfinite(value):
        return "-" if kind else ""
    return f"{value:+.1f} ms" if kind == "diff" else f"{value:.2f}x"


def render(rows: Sequence[dict[str, Any]]) -> str:
    """A Markdown pipe table in the style of `python -m bench`'s."""
    header = [
        "metric",
        "unit",
        "lfx direct",
        "bridge",
        "bridge vs direct",
        "target",
        "result",
        "runs",
    ]
    lines = [header]
    for r in rows:
        target = ""
        if r["target"] is not None:
            target = f">= {r['target']:.1f}x" if r["kind"] == "ratio" else f"<= +{r['target']:g} ms"
        spread = r["per_rep"]
        runs = ""
        if len(spread) > 1:
            lo, hi = min(spread), max(spread)
            runs = f"{lo:.2f}-{hi:.2f}x" if r["kind"] == "ratio" else f"{lo:+.1f}..{hi:+.1f}"
        lines.append(
            [
                r["row"],
                r["unit"],
                _fmt(r["cells"]["direct"]),
                _fmt(r["cells"]["bridge"]),
                _cmp(r["kind"], r["compare"]),
                target,
                r["verdict"],
                runs,
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    numeric = set(range(2, len(header)))
    text = []
    for n, line in enumerate(lines):
        cells = [
            c.rjust(w) if i in numeric else c.ljust(w)
            for i, (c, w) in enumerate(zip(line, widths, strict=True))
        ]
        text.append("| " + " | ".join(cells) + " |")
        if n == 0:
            text.append(
                "|"
                + "|".join(
                    ("-" * (w + 1) + ":") if i in numeric else "-" * (w + 2)
                    for i, w in enumerate(widths)
                )
                + "|"
            )
    return "\n".join(text)


def _notes(
    reps: Sequence[Rep], loads: Sequence[tuple[str, tuple[float, float, float]]], plan: RunsPlan
) -> list[str]:
    errors = {side: sum(r.errors.get(side, 0) for r in reps) for side in ("direct", "bridge")}
    load = ", ".join(f"{what} {la[0]:.2f}" for what, la in loads)
    others = [
        w["cpu"]["others"] / w["cpu"]["wall"]
        for r in reps
        for ws in r.tp.values()
        for w in ws
        if w["cpu"]["wall"]
    ]
    busy = max(others, default=0.0)
    return [
        f"load average (1 min) on {os.cpu_count()} CPUs: {load}; other processes used up to "
        f"{busy:.2f} cores during the throughput windows"
        + (" -- the machine was shared: read ratios with their `runs` range" if busy > 0.4 else ""),
        f"failed messages: direct {errors['direct']}, bridge {errors['bridge']}",
        f"latency: {plan.lat_pairs} messages per side per repetition, alternating; "
        f"throughput: {plan.tp_windows} x {plan.tp_window_s:g} s per side per repetition "
        f"(after {plan.tp_warmup_s:g} s warm-up each), BRIDGE_RUNS_MAX={plan.sessions}",
    ]


def run_bench(
    quick: bool = False, reps: int | None = None, profile_dir: Path | None = None
) -> RunsReport:
    """Start lfx and the bridge, measure, stop them; the report (table rows and notes)."""
    plan = RunsPlan.quick() if quick else RunsPlan.full()
    if reps:
        plan = replace(plan, reps=max(1, min(reps, 20)))
    t0 = time.monotonic()
    loads = [("at start", os.getloadavg())]
    with _servers(plan.sessions) as (lfx, bridge):
        runner: Callable[[Coroutine[Any, Any, list[Rep]]], list[Rep]] = asyncio.run
        with contextlib.suppress(ImportError):
            import uvloop  # the load generators of `python -m bench` run on uvloop too

            runner = uvloop.run
        reps_done = runner(_measure(plan, lfx, bridge, profile_dir))
        alive = bridge.proc is not None and bridge.proc.poll() is None
    loads.append(("at end", os.getloadavg()))
    rows = table_rows(reps_done, plan)
    notes = _notes(reps_done, loads, plan)
    failed = not alive or any(sum(r.errors.values()) for r in reps_done)
    if not alive:
        notes.append(f"the bridge died during the bench (log: {bridge.log_path})")
    return RunsReport(rows, notes, reps_done, plan, time.monotonic() - t0, failed)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.runs",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--quick", action="store_true", help="one repetition, short windows (under a minute)"
    )
    parser.add_argument("--reps", type=int, help="repetitions (default 3, --quick 1)")
    parser.add_argument("--json", metavar="PATH", type=Path, help="also write the figures here")
    parser.add_argument(
        "--profile",
        metavar="DIR",
        type=Path,
        help="py-spy record the bridge process during the measurement "
        "(collapsed stacks, DIR/bridge.txt)",
    )
    parser.add_argument(
        "--priority",
        type=int,
        default=0,
        metavar="N",
        help="run lfx, the bridge and the clients N nice levels above other "
        "processes (root only; for a machine others keep busy)",
    )
    args = parser.parse_args(argv)
    if importlib.util.find_spec("lfx") is None:
        print(
            "lfx is not installed (the `langflow` extra): no `lfx serve` to measure against",
            file=sys.stderr,
        )
        return 2
    if args.priority:
        try:  # inherited by lfx and the bridge
            os.setpriority(os.PRIO_PROCESS, 0, -max(0, min(args.priority, 19)))
        except OSError as exc:
            print(f"--priority ignored: {exc}", file=sys.stderr)
    report = run_bench(quick=args.quick, reps=args.reps, profile_dir=args.profile)
    date = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    nice = os.getpriority(os.PRIO_PROCESS, 0)
    print(
        f"\nstreamlit-bridge runs benchmark (issue 14), {date}, {os.cpu_count()} CPUs, "
        f"median of {report.plan.reps} run(s), {report.seconds:.0f}s total"
        + (f", nice {nice}" if nice else "")
        + "\n"
    )
    print(report.render())
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "date": date,
                    "plan": report.plan.__dict__,
                    "rows": report.rows,
                    "reps": [r.__dict__ for r in report.reps],
                },
                indent=1,
                default=lambda v: None,
            )
        )
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
