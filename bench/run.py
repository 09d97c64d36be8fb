"""`python -m bench`: run every scenario against the reference hub and the bridge, print one table.

Method: each repetition starts every server afresh (its own process, free port), runs the
scenarios on it, and stops it; the order of servers is reversed on every other repetition
so that drift on a shared machine falls on both sides. Figures are medians over the
repetitions; ratios compare medians of the same command's run, never figures from another
day. Servers, subscribers and publishers are separate processes (the machine has 2 cores).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import Any

from bench import scenarios
from bench.load import raise_nofile
from bench.scenarios import Plan
from bench.servers import BRIDGE, BRIDGE_SQLITE, REFERENCE, Server, ServerSpec, bridge_available
from bench.table import checks_line, render, table_rows

__all__ = ["SCENARIOS", "main"]

Single = Callable[[Server, Plan], dict[str, Any]]
Together = Callable[[Sequence[Server], Plan], list[dict[str, Any]]]


@dataclass(frozen=True)
class Scenario:
    """A named measurement. `single` runs on one server at a time; `together` on all the
    run's servers at once, taking turns (the latency rows)."""

    what: str
    single: Single | None = None
    together: Together | None = None
    sqlite_too: bool = False  # whether the SQLite bridge runs it as well


# Memory first: it needs a fresh process (freed memory from earlier scenarios would be
# reused and hide growth); POST/s last: it leaves the most data behind.
SCENARIOS: dict[str, Scenario] = {
    "memory": Scenario("RSS per idle WebSocket", single=scenarios.idle_memory),
    "lat-1x1": Scenario("latency, 1 session x 1 sub", sqlite_too=True,
                        together=lambda s, p: scenarios.latency(s, p, 1, 1)),
    "lat-100x1": Scenario("latency, 100 sessions x 1 sub", sqlite_too=True,
                          together=lambda s, p: scenarios.latency(s, p, 100, 1)),
    "lat-1x100": Scenario("latency, 1 session x 100 subs", sqlite_too=True,
                          together=lambda s, p: scenarios.latency(s, p, 1, 100)),
    "fanout": Scenario("fan-out to 1,000 subs", single=scenarios.fanout),
    "post": Scenario("POST/s over 1,000 sessions", single=scenarios.post_rate, sqlite_too=True),
}
LOG_DIR = Path(__file__).resolve().parent / "results" / "logs"
Runs = dict[str, dict[str, list[dict[str, Any]]]]


def _headline(result: dict[str, Any]) -> str:
    keys = ("p50_ms", "p99_ms", "deliveries_per_s", "posts_per_s", "kib_per_conn",
            "server_busy", "clients_busy", "others_busy", "missing", "out_of_order", "closes")
    parts = []
    for k in keys:
        if k in result:
            v = result[k]
            parts.append(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}")
    return " ".join(parts)


class _NoiseBudget:
    """Seconds this run may spend, beyond its plan, waiting for a quiet machine and
    re-running figures taken while other processes were busy."""

    def __init__(self, seconds: float) -> None:
        self._left = seconds

    def left(self) -> float:
        """Seconds left (0 once spent)."""
        return max(0.0, self._left)

    def spend(self, seconds: float) -> None:
        """Charge `seconds` to the budget."""
        self._left -= seconds


def _attempt(
    name: str, servers: Sequence[Server], plan: Plan, budget: _NoiseBudget
) -> list[dict[str, Any]]:
    """Settle, then run scenario `name` on `servers` (one, or all together)."""
    settled = scenarios.settle(servers, plan.idle_max_s, min(plan.settle_max_s, budget.left()))
    budget.spend(settled["quiet_wait_s"])
    scenario = SCENARIOS[name]
    t0 = time.monotonic()
    try:
        if scenario.together is not None:
            results = scenario.together(servers, plan)
        elif scenario.single is not None:
            results = [scenario.single(servers[0], plan)]
        else:
            raise ValueError(f"scenario {name} has nothing to run")
    except Exception as exc:  # one failed scenario must not lose the whole table
        results = [{"error": f"{type(exc).__name__}: {exc}"} for _ in servers]
    for r in results:
        r.update(settled, seconds=time.monotonic() - t0)
    return results


def _measure(name: str, server: Server, plan: Plan, budget: _NoiseBudget) -> dict[str, Any]:
    """One figure of one server: settle, run; run once more if other processes were busy
    meanwhile, and keep the quieter of the two."""
    [first] = _attempt(name, [server], plan, budget)
    noisy = first.get("others_busy", 0.0) > scenarios.NOISY_CORES
    if not noisy or "error" in first or budget.left() < first["seconds"]:
        return first
    budget.spend(first["seconds"])
    [second] = _attempt(name, [server], plan, budget)
    second["retried"] = True
    return second if second.get("others_busy", 0.0) < first.get("others_busy", 0.0) else first


def _record(runs: Runs, name: str, spec: ServerSpec, rep: int, result: dict[str, Any]) -> None:
    runs.setdefault(name, {}).setdefault(spec.key, []).append(result)
    shown = result.get("error") or _headline(result)
    print(f"  rep {rep + 1} {spec.label:<15} {name:<9} {result['seconds']:5.1f}s  {shown}",
          file=sys.stderr, flush=True)


def _run_rep(order: Sequence[ServerSpec], names: Sequence[str], plan: Plan, rep: int,
             budget: _NoiseBudget, runs: Runs) -> None:
    """One repetition: start every server afresh, run each scenario, stop them."""
    with contextlib.ExitStack() as stack:
        started = [(spec, stack.enter_context(Server(spec, LOG_DIR))) for spec in order]
        for name in names:
            scenario = SCENARIOS[name]
            mine = [(spec, srv) for spec, srv in started
                    if spec.key != BRIDGE_SQLITE.key or scenario.sqlite_too]
            dead = [spec.label for spec, srv in mine if not srv.alive()]
            if dead:  # not restarted: a crash is a finding, and memory needs a fresh start
                for spec, srv in mine:
                    _record(runs, name, spec, rep, {"error": f"{', '.join(dead)} died "
                                                    f"(log: {srv.log_path})", "seconds": 0.0})
                continue
            if scenario.together is not None:
                results = _attempt(name, [srv for _, srv in mine], plan, budget)
                for (spec, _), result in zip(mine, results, strict=True):
                    _record(runs, name, spec, rep, result)
            else:
                for spec, srv in mine:
                    _record(runs, name, spec, rep, _measure(name, srv, plan, budget))


def _environment() -> dict[str, Any]:
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(), "python": platform.python_version(),
        "platform": platform.platform(),
        **{name: metadata.version(name) for name in ("fastapi", "uvicorn", "websockets")},
        "nice": os.getpriority(os.PRIO_PROCESS, 0),
    }


def _clean(value: Any) -> Any:
    """JSON has no NaN: write null; drop raw sample buffers."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Parse options, run the plan, print the table; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="one repetition, short windows (about a minute)")
    parser.add_argument("--only", metavar="NAME[,NAME]",
                        help="run only these scenarios: " + "; ".join(
                            f"{name} ({s.what})" for name, s in SCENARIOS.items()))
    parser.add_argument("--reps", type=int, help="repetitions (default 3, --quick 1)")
    parser.add_argument("--json", metavar="PATH", type=Path, help="also write all figures here")
    parser.add_argument("--priority", type=int, default=0, metavar="N",
                        help="run the servers and load generators N nice levels above other "
                             "processes (root only; for a machine others keep busy)")
    parser.add_argument("--no-cluster", action="store_true",
                        help="skip the Redis cluster table (3 instances + Redis vs 1 instance)")
    parser.add_argument("--no-runs", action="store_true",
                        help="skip the runs table (the bridge running an lfx flow against "
                             "calling lfx serve directly; needs the langflow extra)")
    parser.add_argument("--candidate", choices=("bridge", "reference"), default="bridge",
                        help="'reference' runs the reference against itself: checks the "
                             "harness and shows the noise floor (ratios should be ~1.0x)")
    args = parser.parse_args(argv)

    names = list(SCENARIOS)
    if args.only:
        wanted = {n.strip() for n in args.only.split(",") if n.strip()}
        unknown = sorted(wanted - set(SCENARIOS))
        if unknown:
            parser.error(f"unknown scenario {unknown}; choose from {', '.join(SCENARIOS)}")
        names = [n for n in SCENARIOS if n in wanted]  # canonical order: memory first
    plan = Plan.quick() if args.quick else Plan.full()
    if args.reps:
        plan = replace(plan, reps=max(1, min(args.reps, 20)))

    if args.candidate == "reference":
        servers = [REFERENCE, ServerSpec("bridge", "reference again", "reference")]
    else:
        if not bridge_available():
            print("bridge/__main__.py not found: the bridge is not there yet. "
                  "`python -m bench --candidate reference` checks the harness alone.",
                  file=sys.stderr)
            return 2
        servers = [REFERENCE, BRIDGE, BRIDGE_SQLITE]

    if args.priority:
        try:  # inherited by every server and worker this process starts
            os.setpriority(os.PRIO_PROCESS, 0, -max(0, min(args.priority, 19)))
        except OSError as exc:
            print(f"--priority ignored: {exc}", file=sys.stderr)
    nofile = raise_nofile()  # inherited by servers and workers: 5,000 sockets each side
    if nofile < plan.mem_connections + 1000:
        print(f"open-file limit {nofile} is below {plan.mem_connections + 1000}: "
              "raise `ulimit -n`", file=sys.stderr)
        return 2

    env = _environment()
    print(f"bench: {plan.reps} repetition(s) of {', '.join(names)} on "
          f"{', '.join(s.label for s in servers)} ({env['cpus']} CPUs)", file=sys.stderr)
    runs: Runs = {}
    t0 = time.monotonic()
    budget = _NoiseBudget(plan.noise_budget_s)
    for rep in range(plan.reps):
        _run_rep(servers if rep % 2 == 0 else servers[::-1], names, plan, rep, budget, runs)
    rows = table_rows(runs, servers, asdict(plan))
    print(f"\nstreamlit-bridge benchmark, {env['date']}, {env['cpus']} CPUs, "
          f"median of {plan.reps} run(s), {time.monotonic() - t0:.0f}s total"
          + (f", nice {env['nice']}" if env["nice"] else "") + "\n")
    print(render(rows, servers))
    print()
    print(checks_line(runs, servers))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(_clean(
            {"environment": env, "plan": asdict(plan), "table": rows, "runs": runs}
        ), indent=1))
    failed_runs = any("error" in r for per in runs.values() for rs in per.values() for r in rs)
    if args.candidate == "bridge" and not args.only and not args.no_cluster:
        # Issue 5's table: three instances sharing Redis against one, same load.
        from bench.cluster import render as render_cluster
        from bench.cluster import run_cluster_bench

        print("\nRedis cluster: 3 instances + Redis against 1 instance (same Redis store)\n")
        print(render_cluster(run_cluster_bench(args.quick)))
    if args.candidate == "bridge" and not args.only and not args.no_runs:
        # Issue 14's table: a flow run through the bridge against lfx serve called directly.
        from bench.runs import run_bench as run_runs_bench

        print("\nRuns: the bridge running an lfx flow against calling lfx serve directly\n")
        report = run_runs_bench(quick=args.quick)
        print(report.render())
        failed_runs = failed_runs or report.failed
    return 1 if failed_runs else 0
