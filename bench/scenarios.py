"""The measured scenarios: each starts its worker processes against one running server and
returns a flat dict of figures (plus checks: missing or out-of-order frames, close codes,
how busy the server and the client processes were).

All scenarios share one shape: subscribers connect and report ready, then the publishers run,
then the subscribers are drained and stopped. Every wait is bounded.
"""

from __future__ import annotations

import math
import os
import time
import uuid
from array import array
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psutil

from bench.load import (
    PublishJob,
    SubscribeJob,
    Target,
    publisher_main,
    slice_owner,
    subscriber_main,
)
from bench.servers import Server
from bench.workers import Worker, drain, percentile, ready, workers

__all__ = ["NOISY_CORES", "Plan", "fanout", "idle_memory", "latency", "post_rate", "settle"]

# The machine is shared: CPU used by other processes (in cores) below which it counts as
# quiet before a measurement, and above which a measurement counts as noisy (and is retried
# while the run's noise budget lasts).
QUIET_CORES = 0.25
NOISY_CORES = 0.4
# Latency rows: each server's turn lasts this long (50 messages at 200 msg/s).
SLICE_S = 0.25


@dataclass(frozen=True)
class Plan:
    """Sizes and durations of one benchmark run (`full` and `quick` below)."""

    reps: int  # repetitions of everything; figures are medians over them
    lat_rate: float  # latency rows: messages per second, over all sessions
    lat_seconds: float  # ... publishing time
    lat_warm_seconds: float  # ... first messages not counted
    fanout_subs: int  # fan-out row: subscribers of the one session
    fanout_messages: int  # ... messages published
    fanout_warm: int  # ... first messages not counted
    fanout_window: int  # ... messages published but not yet delivered, at most
    post_sessions: int  # POST/s row: sessions, one subscriber each
    post_seconds: float  # ... counting window
    post_warm_seconds: float  # ... publishing before it
    post_publishers: int  # ... publisher processes
    post_connections: int  # ... keep-alive connections per publisher, one request each
    mem_connections: int  # memory row: idle sockets, one session each
    mem_procs: int  # ... client processes holding them
    idle_max_s: float  # longest wait for the server to finish the previous scenario's work
    settle_max_s: float  # longest wait for a quiet machine before a figure
    noise_budget_s: float  # extra seconds per run for such waits and noisy re-runs

    @classmethod
    def full(cls) -> Plan:
        """The figures quoted in docs/benchmarks.md."""
        return cls(reps=3, lat_rate=200.0, lat_seconds=5.0, lat_warm_seconds=0.5,
                   fanout_subs=1000, fanout_messages=200, fanout_warm=20, fanout_window=4,
                   post_sessions=1000, post_seconds=4.0, post_warm_seconds=1.0,
                   post_publishers=2, post_connections=32,
                   mem_connections=5000, mem_procs=4, idle_max_s=30.0, settle_max_s=10.0,
                   noise_budget_s=60.0)

    @classmethod
    def quick(cls) -> Plan:
        """About a minute: one repetition, short windows, 500 fan-out subscribers and 2,000
        idle sockets (the table's labels say so). A smoke test, not the quoted figures."""
        return cls(reps=1, lat_rate=200.0, lat_seconds=2.0, lat_warm_seconds=0.25,
                   fanout_subs=500, fanout_messages=80, fanout_warm=10, fanout_window=4,
                   post_sessions=1000, post_seconds=2.0, post_warm_seconds=0.5,
                   post_publishers=2, post_connections=32,
                   mem_connections=2000, mem_procs=4, idle_max_s=30.0, settle_max_s=2.0,
                   noise_budget_s=10.0)


def _split(items: Sequence[str], parts: int) -> list[tuple[str, ...]]:
    """Deal `items` into `parts` near-equal chunks, keeping each session's sockets together."""
    size = math.ceil(len(items) / parts)
    return [tuple(items[i : i + size]) for i in range(0, len(items), size)]


def _load_cpus() -> tuple[int, ...]:
    """The CPU the load generators are pinned to: the last one, if there are two or more.

    Pinning leaves the server under test a core that no client ever takes from it; the
    `clients_busy` figure then shows whether the clients' one core was enough.
    """
    cpus = sorted(os.sched_getaffinity(0))
    return (cpus[-1],) if len(cpus) >= 2 else ()


def _tag() -> str:
    return uuid.uuid4().hex[:10]


def _sessions(tag: str, n: int) -> list[str]:
    return [f"bench-{tag}-{i}" for i in range(n)]


def _machine_cpu() -> float:
    """CPU seconds all processes of the machine used (every CPU, busy time only).

    Guest time is already inside user time, and steal is not this machine's work.
    """
    t = psutil.cpu_times()
    busy = t.user + t.nice + t.system
    return float(busy + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0))


def settle(servers: Sequence[Server], idle_max_s: float, quiet_max_s: float) -> dict[str, Any]:
    """Wait until every server of `servers` is idle (at most `idle_max_s`), then until the
    rest of the machine is quiet (at most `quiet_max_s`).

    A server may still be working off the previous scenario (the bridge tells the remaining
    subscribers about each of a thousand leaving ones): that is the benchmark's own work and
    is always waited for. Other tenants of the machine come and go: that wait is bounded by
    the run's noise budget (the caller's `quiet_max_s`).
    """
    t0 = time.monotonic()
    idle_at: float | None = None
    while True:
        w0, m0 = time.monotonic(), _machine_cpu()
        s0 = [srv.cpu_seconds() for srv in servers]
        time.sleep(0.25)  # sampling window
        now = time.monotonic()
        busy = [(srv.cpu_seconds() - c0) / (now - w0) for srv, c0 in zip(servers, s0, strict=True)]
        others = max(0.0, (_machine_cpu() - m0) / (now - w0) - sum(busy))
        if idle_at is None:
            if max(busy) >= 0.05 and now - t0 < idle_max_s:
                continue
            idle_at = now
        quiet = others < QUIET_CORES
        if quiet or now - idle_at >= quiet_max_s:
            return {"idle_wait_s": idle_at - t0, "quiet_wait_s": now - idle_at,
                    "quiet_at_start": quiet, "others_at_start": others}


class _Cpu:
    """CPU time of a server, of the worker processes and of the whole machine between two
    points; `peers` are our other servers (their time is ours, not other tenants')."""

    def __init__(
        self, server: Server, workers: Sequence[Worker], peers: Sequence[Server] = ()
    ) -> None:
        self._server = server
        self._peers = [p for p in peers if p is not server]
        self._workers = workers
        self._t0 = time.monotonic()
        self._s0 = server.cpu_seconds()
        self._p0 = [p.cpu_seconds() for p in self._peers]
        self._w0 = [self._cpu(w) for w in workers]
        self._m0 = _machine_cpu()

    @staticmethod
    def _cpu(w: Worker) -> float:
        # Workers stay alive until told "close", after this is read.
        t = w.ps.cpu_times()
        return float(t.user + t.system)

    def done(self) -> dict[str, float]:
        """Server CPU seconds and busy shares (1.0 = one core) of the server, the busiest
        client, all clients, and everything else on the machine (other tenants: noise)."""
        wall = max(1e-9, time.monotonic() - self._t0)
        server = self._server.cpu_seconds() - self._s0
        peers = sum(p.cpu_seconds() - c0 for p, c0 in zip(self._peers, self._p0, strict=True))
        clients = [self._cpu(w) - c0 for w, c0 in zip(self._workers, self._w0, strict=True)]
        other = _machine_cpu() - self._m0 - server - peers - sum(clients)
        return {"server_cpu_s": server, "server_busy": server / wall,
                "client_busy_max": max(clients, default=0.0) / wall,
                "clients_busy": sum(clients) / wall, "others_busy": max(0.0, other) / wall}


def _checks(subs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    closes: Counter[str] = Counter()
    for r in subs:
        closes.update(r["closes"])
    return {"out_of_order": sum(r["out_of_order"] for r in subs), "closes": dict(closes),
            "other_frames": sum(r["other_frames"] for r in subs)}


def latency(
    servers: Sequence[Server], plan: Plan, sessions: int, subs_per_session: int
) -> list[dict[str, Any]]:
    """Publish-to-deliver latency at `plan.lat_rate` msg/s spread over `sessions`, measured on
    every server of `servers` at once: one publisher gives each its turn for a quarter of a
    second at a time (`slice_owner`), `plan.lat_seconds` per server in all. A stall of the
    shared machine then hits every server alike instead of whichever ran at that minute.
    Returns one dict of figures per server, in order."""
    count = round(plan.lat_rate * plan.lat_seconds * len(servers))
    warm = round(plan.lat_rate * plan.lat_warm_seconds)  # first messages of each server
    targets = [Target(srv.port, tuple(_sessions(tag, sessions)), tag)
               for srv, tag in ((srv, _tag()) for srv in servers)]
    # Which messages each server gets, so each subscriber knows how many frames to count.
    per_server: list[Counter[int]] = [Counter() for _ in servers]
    numbers = [0] * len(servers)
    for i in range(count):
        k = slice_owner(i, plan.lat_rate, SLICE_S, len(servers))
        if numbers[k] >= warm:
            per_server[k][numbers[k] % sessions] += 1
        numbers[k] += 1
    sub_jobs: list[SubscribeJob] = []
    owners: list[int] = []  # server index of each subscriber job
    for k, target in enumerate(targets):
        index = {s: i for i, s in enumerate(target.sessions)}
        sockets = [s for s in target.sessions for _ in range(subs_per_session)]
        for chunk in _split(sockets, 1 if len(sockets) < 50 else 2):
            sub_jobs.append(SubscribeJob(
                target.port, chunk, target.tag, latency=True, count_from=warm,
                expect_total=sum(per_server[k][index[s]] for s in chunk),
                timeout_s=plan.lat_seconds * len(servers) + 90, cpus=_load_cpus(), hold=True))
            owners.append(k)
    first = targets[0]
    pub_job = PublishJob(first.port, first.sessions, first.tag, "rate", connections=8,
                         count=count, rate=plan.lat_rate, alternates=tuple(targets[1:]),
                         slice_s=SLICE_S, timeout_s=plan.lat_seconds * len(servers) + 60,
                         cpus=_load_cpus(), hold=True)
    with workers(subscriber_main, sub_jobs) as subs:
        ready(subs, 60.0)
        with workers(publisher_main, [pub_job]) as pubs:
            cpus = [_Cpu(srv, [*subs, *pubs], servers) for srv in servers]
            pub = pubs[0].expect("result", time.monotonic() + plan.lat_seconds * len(servers) + 60)
            results = drain(subs, 5.0)
            usages = [cpu.done() for cpu in cpus]
    out = []
    for k in range(len(servers)):
        mine = [r for r, owner in zip(results, owners, strict=True) if owner == k]
        samples = array("d")
        for r in mine:
            samples.frombytes(r["latencies"])
        ordered = sorted(samples)
        expected = sum(j.expect_total for j, owner in zip(sub_jobs, owners, strict=True)
                       if owner == k)
        out.append({
            "p50_ms": 1000 * percentile(ordered, 0.50),
            "p99_ms": 1000 * percentile(ordered, 0.99),
            "samples": len(ordered),
            "missing": expected - sum(r["frames"] for r in mine),
            "statuses": pub["statuses_by_target"][k],
            "send_lag_p99_ms": pub["send_lag_p99_ms"],
            **_checks(mine),
            **usages[k],
        })
    return out


def fanout(server: Server, plan: Plan) -> dict[str, Any]:
    """Deliveries per second to `plan.fanout_subs` subscribers of one session."""
    tag = _tag()
    session = _sessions(tag, 1)[0]
    n = plan.fanout_subs
    counted = plan.fanout_messages - plan.fanout_warm
    chunks = _split([session] * n, 2)
    sub_jobs = [
        SubscribeJob(server.port, chunk, tag, count_from=plan.fanout_warm,
                     expect_total=len(chunk) * counted, timeout_s=180.0, cpus=_load_cpus(),
                     hold=True)
        for chunk in chunks
    ]
    pub_job = PublishJob(server.port, (session,), tag, "window", hold=True,
                         connections=plan.fanout_window,
                         count=plan.fanout_messages, window=plan.fanout_window,
                         timeout_s=150.0, cpus=_load_cpus())
    with workers(subscriber_main, sub_jobs) as subs:
        t0 = time.monotonic()
        ready(subs, 60.0)
        connect_s = time.monotonic() - t0
        with workers(publisher_main, [pub_job]) as pubs:
            cpu = _Cpu(server, [*subs, *pubs])
            pub = pubs[0].expect("result", time.monotonic() + 150.0)
            results = drain(subs, 5.0)
            usage = cpu.done()
    pub_times = array("d")
    pub_times.frombytes(pub["pub_times"])
    delivered = sum(r["frames"] for r in results)
    start = pub_times[plan.fanout_warm]
    end = max(r["last_rx"] for r in results)
    published_counted = max(0, pub["published"] - plan.fanout_warm)
    return {
        "deliveries_per_s": delivered / (end - start) if end > start else math.nan,
        "delivered": delivered,
        "missing": published_counted * n - delivered,
        "server_us_per_delivery": 1e6 * usage["server_cpu_s"] / max(1, delivered),
        "statuses": pub["statuses"],
        "pacer_close": pub["pacer_close"],
        "connect_s": connect_s,
        "stalled": pub["stalled"],
        **_checks(results),
        **usage,
    }


def post_rate(server: Server, plan: Plan) -> dict[str, Any]:
    """POSTs per second over `plan.post_sessions` sessions with one subscriber each."""
    tag = _tag()
    ids = _sessions(tag, plan.post_sessions)
    sub_jobs = [SubscribeJob(server.port, chunk, tag, timeout_s=180.0, cpus=_load_cpus(),
                             hold=True)
                for chunk in _split(ids, 2)]
    with workers(subscriber_main, sub_jobs) as subs:
        ready(subs, 60.0)
        # Publishers start together at a shared time, after they have opened their connections.
        start_at = time.monotonic() + 1.5
        pub_jobs = [
            PublishJob(server.port, tuple(ids[k::plan.post_publishers]), tag, "flood", hold=True,
                       connections=plan.post_connections, start_at=start_at,
                       warm_s=plan.post_warm_seconds, measure_s=plan.post_seconds,
                       timeout_s=plan.post_warm_seconds + plan.post_seconds + 60,
                       cpus=_load_cpus())
            for k in range(plan.post_publishers)
        ]
        with workers(publisher_main, pub_jobs) as pubs:
            time.sleep(max(0.0, start_at + plan.post_warm_seconds - time.monotonic()))
            cpu = _Cpu(server, [*subs, *pubs])
            deadline = time.monotonic() + plan.post_seconds + 60
            pub_results = [p.expect("result", deadline) for p in pubs]
            usage = cpu.done()
            results = drain(subs, 1.0)  # deliveries trail the last answers by far less
    statuses: Counter[str] = Counter()
    for p in pub_results:
        statuses.update(p["statuses"])
    counted = sum(p["counted"] for p in pub_results)
    published = sum(p["published"] for p in pub_results)
    return {
        "posts_per_s": counted / plan.post_seconds,
        "published": published,
        "missing": published - sum(r["frames"] for r in results),
        "server_us_per_post": 1e6 * usage["server_cpu_s"] / max(1, counted),
        "statuses": dict(statuses),
        **_checks(results),
        **usage,
    }


def idle_memory(server: Server, plan: Plan) -> dict[str, Any]:
    """Server RSS growth per idle WebSocket, one session per socket (one tab per chat).

    A first small batch is opened and closed before the baseline, so that code and buffers
    loaded on first use are not charged to the connections.
    """
    warm_tag = _tag()
    warm_job = SubscribeJob(server.port, tuple(_sessions(warm_tag, 100)), warm_tag,
                            timeout_s=60.0, hold=True)
    with workers(subscriber_main, [warm_job]) as warm:
        ready(warm, 60.0)
        drain(warm, 0.0)
    time.sleep(0.5)  # let the server finish closing the warm-up sockets
    before = server.rss()
    tag = _tag()
    chunks = _split(_sessions(tag, plan.mem_connections), plan.mem_procs)
    jobs = [SubscribeJob(server.port, chunk, tag, timeout_s=180.0, cpus=_load_cpus(), hold=True)
            for chunk in chunks]
    with workers(subscriber_main, jobs) as subs:
        t0 = time.monotonic()
        connected = ready(subs, 120.0)
        connect_s = time.monotonic() - t0
        time.sleep(1.0)  # idle: heartbeats and lazy allocations settle
        after = server.rss()
        results = drain(subs, 0.0)
    return {
        "kib_per_conn": (after - before) / 1024 / max(1, connected),
        "connected": connected,
        "rss_before_mib": before / 2**20,
        "rss_after_mib": after / 2**20,
        "connect_s": connect_s,
        **_checks(results),
    }
