"""`python -m bench.cluster`: three bridge instances sharing Redis against one instance.

Both sides use the same Redis store (`redis://127.0.0.1:6379/15`, a fresh key prefix per
run) and the same load, so the only difference is where the sockets are:

- single: one instance; the publisher and every subscriber talk to it.
- cluster: three instances A, B, C; the publisher POSTs to A, half of the subscribers
  are on B and half on C, so every measured delivery crossed instances through Redis
  pub/sub.

Rows: publish-to-deliver latency (p50, p99) at a fixed rate over 20 sessions with two
subscribers each, and fan-out deliveries per second to one session with 1,000
subscribers (a publisher keeping 4 messages in flight). Target (issue 5): the cluster's
p99 at most 2x the single instance's. Repetitions alternate the order of the two sides;
figures are medians. The worker processes and the measurement are those of
`bench.load` (see `bench.scenarios` for the method); this module only places them.

On a 2-core machine the cluster side runs 3 bridge processes, Redis, 2 subscriber
workers and a publisher on 2 cores: it measures the protocol's cost (an extra process
hop and a second parse per event), not the capacity three machines would have.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import threading
import time
import uuid
from array import array
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import redis

from bench.load import PublishJob, SubscribeJob, publisher_main, raise_nofile, subscriber_main
from bench.servers import Server, ServerSpec, bridge_available
from bench.table import median
from bench.workers import Worker, drain, percentile, ready, workers
from tests.redis_support import REDIS, wipe_sync

__all__ = ["ClusterPlan", "main", "run_cluster_bench"]

LOG_DIR = Path(__file__).resolve().parent / "results" / "logs"


@dataclass(frozen=True)
class ClusterPlan:
    """Sizes and durations of one run."""

    reps: int
    lat_sessions: int
    lat_rate: float
    lat_seconds: float
    lat_warm_seconds: float
    fanout_subs: int
    fanout_messages: int
    fanout_warm: int
    fanout_window: int

    @classmethod
    def full(cls) -> ClusterPlan:
        """The figures quoted in docs/scaling.md."""
        return cls(reps=3, lat_sessions=20, lat_rate=200.0, lat_seconds=6.0,
                   lat_warm_seconds=0.5, fanout_subs=1000, fanout_messages=200,
                   fanout_warm=20, fanout_window=4)

    @classmethod
    def quick(cls) -> ClusterPlan:
        """About a minute: one repetition, short windows, same sizes."""
        return cls(reps=1, lat_sessions=20, lat_rate=200.0, lat_seconds=2.0,
                   lat_warm_seconds=0.25, fanout_subs=1000, fanout_messages=60,
                   fanout_warm=10, fanout_window=4)


def _closes(results: Sequence[dict[str, Any]]) -> dict[str, int]:
    """Close codes the server sent while subscribers listened (4000: too slow)."""
    total: dict[str, int] = {}
    for r in results:
        for code, n in r["closes"].items():
            total[code] = total.get(code, 0) + n
    return total


# ---------------------------------------------------------------------------- topology


@dataclass
class _Topology:
    """Where the publisher and the two subscriber workers connect."""

    name: str
    servers: list[Server]
    pub_port: int
    sub_ports: tuple[int, int]

    def cpu(self) -> float:
        return sum(s.cpu_seconds() for s in self.servers)


def _redis_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


class _Usage:
    """CPU used between two points by the servers, Redis, the load workers, and everything
    else on the machine (other tenants: if that is high, the figures are noisy).

    Workers exit right after they report, and an exited process's CPU time can no longer
    be read: a thread samples them every 50 ms and keeps the last reading of each."""

    def __init__(self, topo: _Topology, rc: redis.Redis, workers: Sequence[Worker]) -> None:
        self._topo, self._rc = topo, rc
        self._procs = [w.ps for w in workers]
        self._seen = [self._cpu(p) for p in self._procs]
        self._t0 = time.monotonic()
        self._start = self._sample()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="bench-cpu", daemon=True)
        self._thread.start()

    @staticmethod
    def _cpu(proc: psutil.Process) -> float | None:
        try:
            t = proc.cpu_times()
        except psutil.Error:
            return None  # gone: keep the last reading
        return float(t.user + t.system)

    def _watch(self) -> None:
        while not self._stop.wait(0.05):
            self._read_workers()

    def _read_workers(self) -> float:
        for i, proc in enumerate(self._procs):
            now = self._cpu(proc)
            if now is not None:
                self._seen[i] = now
        return sum(v for v in self._seen if v is not None)

    def _sample(self) -> tuple[float, float, float, float]:
        m = psutil.cpu_times()
        machine = float(m.user + m.nice + m.system + m.irq + m.softirq + m.steal)
        return self._topo.cpu(), _redis_cpu(self._rc), self._read_workers(), machine

    def done(self) -> dict[str, float]:
        """Busy shares (1.0 = one core) and the servers' CPU seconds."""
        self._stop.set()
        self._thread.join(timeout=1.0)
        wall = max(1e-9, time.monotonic() - self._t0)
        servers, red, clients, machine = (
            b - a for a, b in zip(self._start, self._sample(), strict=True)
        )
        others = max(0.0, machine - servers - red - clients)
        return {"server_cpu_s": servers, "servers_busy": servers / wall,
                "redis_busy": red / wall, "clients_busy": clients / wall,
                "others_busy": others / wall}


@contextmanager
def _topology(name: str, instances: int) -> Iterator[_Topology]:
    prefix = f"bench-{name}-{uuid.uuid4().hex[:8]}"
    spec = ServerSpec(f"{name}", f"bridge {name}", "bridge", f"{REDIS}?prefix={prefix}")
    with ExitStack() as stack:
        servers = [stack.enter_context(Server(spec, LOG_DIR)) for _ in range(instances)]
        if instances == 1:
            topo = _Topology(name, servers, servers[0].port, (servers[0].port,) * 2)
        else:
            topo = _Topology(name, servers, servers[0].port, (servers[1].port, servers[2].port))
        try:
            yield topo
        finally:
            stack.close()
            wipe_sync(prefix)


# --------------------------------------------------------------------------- scenarios


def _latency(topo: _Topology, plan: ClusterPlan, rc: redis.Redis) -> dict[str, Any]:
    """Publish on the publisher's instance at a fixed rate; each session has one
    subscriber in each of the two subscriber workers (on B and C in the cluster)."""
    tag = uuid.uuid4().hex[:10]
    ids = tuple(f"bench-{tag}-{i}" for i in range(plan.lat_sessions))
    count = round(plan.lat_rate * plan.lat_seconds)
    warm = round(plan.lat_rate * plan.lat_warm_seconds)
    jobs = [
        SubscribeJob(port, ids, tag, latency=True, count_from=warm, expect_total=count - warm,
                     timeout_s=plan.lat_seconds + 90)
        for port in topo.sub_ports
    ]
    pub = PublishJob(topo.pub_port, ids, tag, "rate", connections=8, count=count,
                     rate=plan.lat_rate, timeout_s=plan.lat_seconds + 60)
    with workers(subscriber_main, jobs) as subs:
        ready(subs, 60.0)
        with workers(publisher_main, [pub]) as pubs:
            usage = _Usage(topo, rc, [*subs, *pubs])
            published = pubs[0].expect("result", time.monotonic() + plan.lat_seconds + 60)
            results = drain(subs, 5.0)
            cpu = usage.done()
    samples = array("d")
    for r in results:
        samples.frombytes(r["latencies"])
    ordered = sorted(samples)
    return {
        "p50_ms": 1000 * percentile(ordered, 0.50),
        "p99_ms": 1000 * percentile(ordered, 0.99),
        "samples": len(ordered),
        "missing": sum(j.expect_total for j in jobs) - sum(r["frames"] for r in results),
        "out_of_order": sum(r["out_of_order"] for r in results),
        "closes": _closes(results),
        "statuses": published["statuses"],
        **cpu,
    }


def _fanout(topo: _Topology, plan: ClusterPlan, rc: redis.Redis) -> dict[str, Any]:
    """Deliveries per second to one session's subscribers, half in each worker."""
    tag = uuid.uuid4().hex[:10]
    session = f"bench-{tag}-0"
    half = plan.fanout_subs // 2
    counted = plan.fanout_messages - plan.fanout_warm
    jobs = [
        SubscribeJob(port, (session,) * half, tag, count_from=plan.fanout_warm,
                     expect_total=half * counted, timeout_s=180.0)
        for port in topo.sub_ports
    ]
    pub = PublishJob(topo.pub_port, (session,), tag, "window", connections=plan.fanout_window,
                     count=plan.fanout_messages, window=plan.fanout_window, timeout_s=150.0)
    with workers(subscriber_main, jobs) as subs:
        ready(subs, 60.0)
        with workers(publisher_main, [pub]) as pubs:
            usage = _Usage(topo, rc, [*subs, *pubs])
            published = pubs[0].expect("result", time.monotonic() + 150.0)
            results = drain(subs, 5.0)
            cpu = usage.done()
    pub_times = array("d")
    pub_times.frombytes(published["pub_times"])
    delivered = sum(r["frames"] for r in results)
    start = pub_times[plan.fanout_warm] if len(pub_times) > plan.fanout_warm else math.nan
    end = max((r["last_rx"] for r in results), default=math.nan)
    return {
        "deliveries_per_s": delivered / (end - start) if end > start else math.nan,
        "delivered": delivered,
        "missing": max(0, published["published"] - plan.fanout_warm) * 2 * half - delivered,
        "out_of_order": sum(r["out_of_order"] for r in results),
        "closes": _closes(results),
        "statuses": published["statuses"],
        "server_us_per_delivery": 1e6 * cpu["server_cpu_s"] / max(1, delivered),
        **cpu,
    }


# ---------------------------------------------------------------------------- the table

# (label, scenario, metric, unit, target ratio or None, higher is better)
_ROWS: tuple[tuple[str, str, str, str, float | None, bool], ...] = (
    ("cross-instance latency p50 (20 sessions x 2 subs, 200/s)", "lat", "p50_ms", "ms",
     None, False),
    ("cross-instance latency p99 (20 sessions x 2 subs, 200/s)", "lat", "p99_ms", "ms",
     2.0, False),
    ("fan-out, 1 session x 1,000 subs", "fanout", "deliveries_per_s", "deliv/s", None, True),
    ("server CPU per delivery, all instances (fan-out)", "fanout", "server_us_per_delivery",
     "us", None, False),
)


def _rows(runs: dict[str, dict[str, list[dict[str, Any]]]]) -> list[dict[str, Any]]:
    rows = []
    for label, scenario, metric, unit, target, higher in _ROWS:
        cluster = median([r.get(metric, math.nan) for r in runs["cluster"][scenario]])
        single = median([r.get(metric, math.nan) for r in runs["single"][scenario]])
        ratio = cluster / single if math.isfinite(cluster) and single else math.nan
        verdict: bool | None = None
        if target is not None and math.isfinite(ratio):
            verdict = ratio >= target if higher else ratio <= target
        rows.append({
            "name": label, "unit": unit, "bridge": cluster, "reference": single,
            "ratio": ratio, "target": target, "higher_is_better": higher, "pass": verdict,
        })

    def total(name: str, key: str) -> float:
        results = [r for per in runs[name].values() for r in per]
        if any("error" in r for r in results):
            return math.nan
        return float(sum(r.get(key, 0) for r in results))

    def worst(name: str, key: str) -> float:
        return max((r.get(key, 0.0) for per in runs[name].values() for r in per), default=0.0)

    bad = {name: total(name, "missing") + total(name, "out_of_order") for name in runs}
    rows.append({
        "name": "frames missing or out of order, all runs (must be 0)", "unit": "frames",
        "bridge": bad["cluster"], "reference": bad["single"], "ratio": math.nan,
        "target": None, "higher_is_better": False,
        "pass": bad["cluster"] == 0 and bad["single"] == 0,
    })
    closes = {name: float(sum(sum(r.get("closes", {}).values())
                              for per in runs[name].values() for r in per)) for name in runs}
    rows.append({
        "name": "sockets closed by the server, all runs (4000: client too slow)",
        "unit": "sockets", "bridge": closes["cluster"], "reference": closes["single"],
        "ratio": math.nan, "target": None, "higher_is_better": False, "pass": None,
    })
    # No verdict: a figure measured while other processes used the CPU is noisy.
    rows.append({
        "name": "CPU used by other processes, worst run (noise)", "unit": "cores",
        "bridge": worst("cluster", "others_busy"), "reference": worst("single", "others_busy"),
        "ratio": math.nan, "target": None, "higher_is_better": False, "pass": None,
    })
    return rows


def run_cluster_bench(quick: bool) -> list[dict[str, Any]]:
    """Run both topologies (`quick`: one short repetition) and return the table rows:
    `bridge` is the 3-instance figure, `reference` the single instance's (same Redis),
    `ratio` bridge / reference, `pass` the verdict against `target` (None: no target).
    Progress and the consistency checks go to stderr."""
    plan = ClusterPlan.quick() if quick else ClusterPlan.full()
    raise_nofile()
    rc = redis.Redis.from_url(REDIS)
    try:
        rc.ping()
    except redis.RedisError as exc:
        rc.close()
        raise RuntimeError(f"bench.cluster needs Redis at {REDIS}: {exc}") from exc
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {
        "single": {"lat": [], "fanout": []}, "cluster": {"lat": [], "fanout": []},
    }
    try:
        for rep in range(plan.reps):
            order = [("single", 1), ("cluster", 3)]
            for name, instances in order if rep % 2 == 0 else order[::-1]:
                with _topology(name, instances) as topo:
                    for scenario, measure in (("lat", _latency), ("fanout", _fanout)):
                        t0 = time.monotonic()
                        try:
                            result = measure(topo, plan, rc)
                        except Exception as exc:  # one failure must not lose the table
                            result = {"error": f"{type(exc).__name__}: {exc}"}
                        runs[name][scenario].append(result)
                        shown = {k: (round(v, 3) if isinstance(v, float) else v)
                                 for k, v in result.items()}
                        print(f"  rep {rep + 1} {name:<7} {scenario:<6} "
                              f"{time.monotonic() - t0:5.1f}s {shown}", file=sys.stderr,
                              flush=True)
    finally:
        rc.close()
    return _rows(runs)


def render(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as a Markdown table."""
    def fmt(v: float) -> str:
        if not math.isfinite(v):
            return "-"
        return f"{v:,.0f}" if v >= 100 else f"{v:.2f}"

    lines = ["| metric | unit | 3 instances | 1 instance | ratio | target | result |",
             "|---|---|---:|---:|---:|---:|---|"]
    for r in rows:
        target = "" if r["target"] is None else (
            (">= " if r["higher_is_better"] else "<= ") + f"{r['target']:.1f}x")
        result = "" if r["pass"] is None else ("pass" if r["pass"] else "FAIL")
        ratio = f"{r['ratio']:.2f}x" if math.isfinite(r["ratio"]) else "-"
        lines.append(f"| {r['name']} | {r['unit']} | {fmt(r['bridge'])} | "
                     f"{fmt(r['reference'])} | {ratio} | {target} | {result} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the cluster benchmark and print its table; 1 if a run failed or a target missed."""
    parser = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one short repetition")
    args = parser.parse_args(argv)
    if not bridge_available():
        print("bridge/__main__.py not found", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    rows = run_cluster_bench(args.quick)
    print(f"\nstreamlit-bridge cluster benchmark: 3 instances + Redis vs 1 instance + Redis, "
          f"{os.cpu_count()} CPUs, {time.monotonic() - t0:.0f}s\n")
    print(render(rows))
    missed = any(r["pass"] is False or not math.isfinite(r["bridge"]) for r in rows)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
