"""From repeated runs to the one table: medians per server, ratios to the reference, targets.

`runs[scenario][server_key]` is the list of figure dicts that one scenario produced for one
server, one per repetition. A `Row` picks one figure; its cells are the medians; its ratio is
the candidate's median over the reference's median; its verdict compares that ratio with the
target of issue 2. The `runs` column is the range of the ratios of each repetition (bridge
repetition i over reference repetition i, taken minutes or, for latency, seconds apart): a
target inside that range is not met or missed beyond doubt, whatever the verdict says.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bench.scenarios import NOISY_CORES
from bench.servers import ServerSpec

__all__ = ["ROWS", "Row", "Runs", "checks_line", "median", "render", "table_rows"]

Runs = Mapping[str, Mapping[str, Sequence[Mapping[str, Any]]]]


@dataclass(frozen=True)
class Row:
    """One line of the table: `metric` of `scenario`, judged on the `candidate` server.

    `label` may name fields of the plan (`{fanout_subs:,}`): the sizes actually run.
    """

    label: str
    scenario: str
    metric: str
    unit: str
    candidate: str = "bridge"
    higher_is_better: bool = False
    target: float | None = None


ROWS: tuple[Row, ...] = (
    Row("latency p50, 1 session x 1 sub", "lat-1x1", "p50_ms", "ms"),
    Row("latency p99, 1 session x 1 sub", "lat-1x1", "p99_ms", "ms", target=1.5),
    Row("latency p50, 100 sessions x 1 sub", "lat-100x1", "p50_ms", "ms"),
    Row("latency p99, 100 sessions x 1 sub", "lat-100x1", "p99_ms", "ms", target=1.5),
    Row("latency p50, 1 session x 100 subs", "lat-1x100", "p50_ms", "ms"),
    Row("latency p99, 1 session x 100 subs", "lat-1x100", "p99_ms", "ms", target=1.5),
    Row("fan-out, 1 session x {fanout_subs:,} subs", "fanout", "deliveries_per_s", "deliv/s",
        higher_is_better=True, target=1.0),
    Row("POST/s, {post_sessions:,} sessions x 1 sub", "post", "posts_per_s", "POST/s",
        candidate="bridge_sqlite", higher_is_better=True, target=0.9),
    Row("memory per idle WebSocket ({mem_connections:,})", "memory", "kib_per_conn", "KiB",
        target=1.1),
    # Diagnostics, no target: where the CPU goes.
    Row("server CPU per delivery (fan-out)", "fanout", "server_us_per_delivery", "us"),
    Row("server CPU per POST (POST/s row)", "post", "server_us_per_post", "us",
        candidate="bridge_sqlite"),
    Row("time to connect {fanout_subs:,} subs to one session", "fanout", "connect_s", "s"),
)


def median(values: Sequence[float]) -> float:
    """Median of the finite values, NaN if none."""
    finite = [v for v in values if isinstance(v, int | float) and math.isfinite(v)]
    return statistics.median(finite) if finite else math.nan


def _values(runs: Runs, row: Row, server: str) -> list[float]:
    """One value per repetition, in order; NaN where that repetition failed."""
    values = []
    for r in runs.get(row.scenario, {}).get(server, ()):
        v = r.get(row.metric)
        values.append(float(v) if isinstance(v, int | float) else math.nan)
    return values


def _fmt(value: float) -> str:
    if not math.isfinite(value):
        return "-"
    if value >= 1000:
        return f"{value:,.0f}"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def table_rows(
    runs: Runs, servers: Sequence[ServerSpec], sizes: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """The table as data: per row, the medians, ratio, target and verdict; `sizes` (the
    plan's fields) fill in the sizes named in the labels."""
    out = []
    for row in ROWS:
        if row.scenario not in runs:
            continue
        cells = {s.key: median(_values(runs, row, s.key)) for s in servers}
        # Without a SQLite column (`--candidate reference`) the memory column stands in.
        candidate = row.candidate if row.candidate in cells else "bridge"
        ref = cells.get("reference", math.nan)
        cand = cells.get(candidate, math.nan)
        ratio = cand / ref if math.isfinite(ref) and ref and math.isfinite(cand) else math.nan
        # Repetition i of the candidate against repetition i of the reference: taken in the
        # same minute (the latency rows in the same seconds), so their spread is the noise.
        per_rep = [c / r for c, r in zip(_values(runs, row, candidate),
                                         _values(runs, row, "reference"), strict=False)
                   if math.isfinite(c) and math.isfinite(r) and r]
        verdict = ""
        if row.target is not None:
            if not math.isfinite(ratio):
                verdict = "n/a"
            elif row.higher_is_better:
                verdict = "pass" if ratio >= row.target else "FAIL"
            else:
                verdict = "pass" if ratio <= row.target else "FAIL"
        out.append({
            "row": row.label.format(**sizes), "unit": row.unit, "cells": cells,
            "candidate": candidate,
            "ratio": ratio, "target": row.target, "higher_is_better": row.higher_is_better,
            "verdict": verdict, "per_rep_ratios": per_rep,
        })
    return out


def render(rows: Sequence[Mapping[str, Any]], servers: Sequence[ServerSpec]) -> str:
    """A Markdown pipe table, readable as is in a terminal."""
    header = ["metric", "unit", *(s.label for s in servers), "ratio", "target", "result",
              "runs"]
    lines = [header]
    labels = {s.key: s.label for s in servers}
    for r in rows:
        target = ""
        if r["target"] is not None:
            target = (">= " if r["higher_is_better"] else "<= ") + f"{r['target']:.1f}x"
        ratio = f"{r['ratio']:.2f}x" if math.isfinite(r["ratio"]) else "-"
        if r["candidate"] != "bridge" and ratio != "-":
            ratio += f" ({labels.get(r['candidate'], r['candidate']).split()[-1]})"
        spread = r["per_rep_ratios"]
        noise = f"{min(spread):.2f}-{max(spread):.2f}x" if len(spread) > 1 else "-"
        lines.append([r["row"], r["unit"], *(_fmt(r["cells"][s.key]) for s in servers),
                      ratio, target, r["verdict"], noise])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    numeric = set(range(2, len(header)))
    text = []
    for n, line in enumerate(lines):
        cells = [c.rjust(w) if i in numeric else c.ljust(w)
                 for i, (c, w) in enumerate(zip(line, widths, strict=True))]
        text.append("| " + " | ".join(cells) + " |")
        if n == 0:
            text.append("|" + "|".join(("-" * (w + 1) + ":") if i in numeric else "-" * (w + 2)
                                       for i, w in enumerate(widths)) + "|")
    return "\n".join(text)


def checks_line(runs: Runs, servers: Sequence[ServerSpec]) -> str:
    """One line per server: missing and out-of-order frames, server-side closes, errors, and
    the worst CPU use of the load generators (near 100%: they share one core, client-bound)
    and of everything else on the machine (other tenants: noise)."""
    lines = []
    for s in servers:
        missing = disorder = errors = noisy = measured = 0
        closes: dict[str, int] = {}
        busy = others = 0.0
        for per_server in runs.values():
            for r in per_server.get(s.key, ()):
                if "error" in r:
                    errors += 1
                    continue
                missing += int(r.get("missing", 0))
                disorder += int(r.get("out_of_order", 0))
                for code, n in r.get("closes", {}).items():
                    closes[code] = closes.get(code, 0) + n
                busy = max(busy, float(r.get("clients_busy", 0.0)))
                others = max(others, float(r.get("others_busy", 0.0)))
                measured += 1
                noisy += float(r.get("others_busy", 0.0)) > NOISY_CORES
        closed = ", ".join(f"{n} x {c}" for c, n in sorted(closes.items())) or "none"
        lines.append(
            f"{s.label}: missing frames {missing}, out of order {disorder}, closed by server: "
            f"{closed}, failed runs {errors}; CPU (share of one core, worst run): clients "
            f"{100 * busy:.0f}%, other processes on the machine {100 * others:.0f}% "
            f"({noisy} of {measured} figures taken while others used > {NOISY_CORES:.1f} core)"
        )
    return "\n".join(lines)
