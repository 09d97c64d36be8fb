"""Browser benchmark of the chat page against a page that polls like the original (issue 15).

    python -m bench.browser            (make bench-browser; about 2.5 minutes)

Starts a real bridge (`memory://`, so storage does not count), the real chat page and the
reference polling page (`bench/browser_polling_page.py`: `sleep(2); st.rerun()` re-reading
the history), drives both in Debian's Chromium in the same run, and prints one table with
issue 15's targets:

- **POST to visible**, p50 and p95: a message POSTed by another client through the bridge's
  HTTP API, from just before the request is written until its text is visible anywhere in
  the tab (the listener's provisional bubble or Streamlit's element, whichever is first);
  `--messages` probes at random 0.2-0.4 s intervals into a session with 20 and with 300
  messages of history, on a quiet machine and on a busy one (one CPU-bound process per core
  while measuring; the load average and the busy cores are printed);
- **Streamlit element in place**, p95: the same probes until their text is visible inside
  Streamlit's own `st.chat_message` (`[data-testid="stChatMessage"]`; the benchmark may look
  at Streamlit's DOM, the page may not);
- **stream chunk visible**, p95: a streamed reply (NDJSON, 100 chunks, one every 20 ms, with
  headings, `**bold**` and list items), from the chunk being handed to the HTTP client until
  its text is visible; half-way, the stream pauses and the tab is asked whether the bold text
  is a `<strong>` and the list items `<li>` while the reply is still streaming;
- burst of 20 (no target): 20 POSTs back to back, from just before the last one until all
  20 are visible / all are Streamlit elements;
- **push against polling**: the polling page's POST-to-visible p50 over the chat page's.

Clock: a MutationObserver installed in the tab stamps `performance.timeOrigin +
performance.now()` when each unique `MK-<tag>-KM` marker first becomes visible (its text
node is in the DOM and `checkVisibility()` is true; a node added hidden is checked again on
every animation frame until it shows). Each tab measures the offset of that clock from its
own `Date.now()` when it opens, so that every stamp is epoch milliseconds on the wall
clock, the clock of `time.time()` that stamps the POSTs in this process. The typing effect
is off (`write_speed=0`) so that delivery, not a cosmetic delay, is measured.

Figures and every sample are also written as JSON (`--json`, default
`bench/results/browser.json`); the pages' and the bridge's logs go to
`bench/results/logs/browser-<time>/`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil
from playwright.sync_api import Browser, Page, sync_playwright

from streamlit_client.client import BridgeClient
from streamlit_client.launcher import PAGE
from streamlit_client.models import Template
from tests.browser_support import RunningPage, launch_chromium
from tests.support import RunningBridge, bridge_env, free_port, stop_process

ROOT = Path(__file__).resolve().parent.parent
POLLING_PAGE = Path(__file__).resolve().parent / "browser_polling_page.py"
RESULTS = ROOT / "bench" / "results"
CHAT_MESSAGE = '[data-testid="stChatMessage"]'

# Issue 15's targets.
VISIBLE_P50_MS = 15.0
VISIBLE_P95_MS = 40.0
ELEMENT_P95_MS = 150.0
CHUNK_P95_MS = 20.0
PUSH_VS_POLLING = 50.0

# Stamps, per `MK-<tag>-KM` marker, the first time its text is visible anywhere (`seen`) and
# visible inside Streamlit's st.chat_message (`chat`). Stamps are performance.timeOrigin +
# performance.now(), in ms.
OBSERVER_JS = r"""
(chatSelector) => {
  if (window.__bench) return;
  const B = window.__bench = {seen: {}, chat: {}, pending: new Set(), frame: 0};
  const now = () => performance.timeOrigin + performance.now();
  const RE = /MK-([A-Za-z0-9]+)-KM/g;
  const VISIBLE = {opacityProperty: true, visibilityProperty: true};
  // true: done with this text node (recorded, or gone); false: look again later
  const check = (node, at) => {
    const parent = node.parentElement;
    if (!node.isConnected || !parent) return true;
    if (!parent.checkVisibility(VISIBLE)) return false;
    const inChat = parent.closest(chatSelector) !== null;
    for (const m of node.data.matchAll(RE)) {
      const tag = m[1];
      if (!(tag in B.seen)) B.seen[tag] = at;
      if (inChat && !(tag in B.chat)) B.chat[tag] = at;
    }
    return true;
  };
  const tick = () => {
    B.frame = 0;
    const at = now();
    for (const node of [...B.pending]) if (check(node, at)) B.pending.delete(node);
    if (B.pending.size) B.frame = requestAnimationFrame(tick);
  };
  const consider = (node, at) => {
    if (node.data.indexOf('MK-') < 0 || check(node, at)) return;
    B.pending.add(node);
    if (!B.frame) B.frame = requestAnimationFrame(tick);
  };
  const scan = (root, at) => {
    if (root.nodeType === Node.TEXT_NODE) { consider(root, at); return; }
    if (root.nodeType !== Node.ELEMENT_NODE) return;
    if ((root.textContent || '').indexOf('MK-') < 0) return;
    const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
    for (let n = walker.nextNode(); n; n = walker.nextNode()) consider(n, at);
  };
  new MutationObserver((mutations) => {
    const at = now();
    for (const mu of mutations) {
      if (mu.type === 'characterData') consider(mu.target, at);
      for (const node of mu.addedNodes) scan(node, at);
    }
  }).observe(document.body, {childList: true, subtree: true, characterData: true});
}
"""

# Installed before the page's own scripts: stamps, with the observer's clock, when a text
# WebSocket frame carrying a marker is handed to the page's JavaScript (the listener's
# socket; Streamlit's own socket carries binary frames and is skipped). This listener is
# registered first, so it runs before the page's own handler of the same frame.
FRAMES_JS = r"""
(() => {
  const Native = window.WebSocket;
  const frames = window.__benchFrames = {};
  const RE = /MK-([A-Za-z0-9]+)-KM/g;
  class Stamped extends Native {
    constructor(...args) {
      super(...args);
      this.addEventListener('message', (ev) => {
        if (typeof ev.data !== 'string' || ev.data.indexOf('MK-') < 0) return;
        const at = performance.timeOrigin + performance.now();
        for (const m of ev.data.matchAll(RE)) if (!(m[1] in frames)) frames[m[1]] = at;
      });
    }
  }
  window.WebSocket = Stamped;
})();
"""

# Date.now() minus the observer's clock, averaged over 5 ms (Date.now() is whole ms,
# truncated: the mean is 0.5 ms low).
CLOCK_JS = """
() => {
  let sum = 0, n = 0;
  const end = performance.now() + 5;
  while (performance.now() < end) {
    sum += Date.now() - (performance.timeOrigin + performance.now());
    n += 1;
  }
  return sum / n + 0.5;
}
"""

# Whether the marker is, right now, visible in a <strong> / an <li> outside Streamlit's
# elements (the stream is still open when this is asked).
MARKDOWN_JS = """
([bold, item, chatSelector]) => {
  const inStream = (selector, text) => [...document.querySelectorAll(selector)].some(
    (el) => el.textContent.includes(text) && el.closest(chatSelector) === null
      && el.checkVisibility({opacityProperty: true, visibilityProperty: true}));
  // what the tab shows around the bold marker, for the report when the answer is no
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  let html = '';
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    const parent = n.parentElement;
    if (n.data.includes(bold) && parent && parent.closest(chatSelector) === null) {
      html = (parent.closest('p, li, div') || parent).outerHTML.slice(0, 300);
    }
  }
  return {strong: inStream('strong', bold), li: inStream('li', item), html};
}
"""


def marker(tag: str) -> str:
    return f"MK-{tag}-KM"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def load_average() -> float:
    return os.getloadavg()[0]


def busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy (all cores, not idle or waiting)."""
    t = psutil.cpu_times()
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))


@dataclass
class Probes:
    """POST-to-visible and POST-to-element latencies of one condition (ms)."""

    visible: list[float] = field(default_factory=list)
    frame: list[float] = field(default_factory=list)  # to the frame in the tab's JavaScript
    element: list[float] = field(default_factory=list)
    load_before: float = 0.0
    load_after: float = 0.0
    busy_cores: float = 0.0  # the machine's busy CPU time over the probes / their duration


@dataclass
class Stream:
    """One streamed reply: chunk latencies (ms) and what the tab showed mid-stream."""

    chunks: list[float] = field(default_factory=list)
    frames: list[float] = field(default_factory=list)  # to the frame in the tab's JavaScript
    shown: str = ""  # the HTML around the bold marker, mid-stream
    strong: bool = False
    li: bool = False


@dataclass
class Figures:
    """What one page measured, by condition ("quiet" / "busy")."""

    latency: dict[str, dict[int, Probes]] = field(default_factory=dict)
    bursts_visible: list[float] = field(default_factory=list)
    bursts_element: list[float] = field(default_factory=list)
    streams: dict[str, list[Stream]] = field(default_factory=dict)
    clock_offsets: list[float] = field(default_factory=list)


class Bench:
    """Runs the measurements against one page kind."""

    def __init__(
        self, api: BridgeClient, browser: Browser, page: RunningPage, *, push: bool, messages: int
    ) -> None:
        self.api = api
        self.browser = browser
        self.page = page
        self.push = push
        self.messages = messages
        self.figures = Figures()
        self.offset = 0.0  # of the current tab: Date.now() - observer clock

    # -- one session and tab per measurement ----------------------------------------------

    def session(self, history: int) -> tuple[str, Page]:
        sid = f"bench-{uuid.uuid4().hex[:10]}"
        self.api.create_session(sid)  # the welcome message is message 1
        for i in range(history - 1):
            self.api.post_message(sid, "ai" if i % 2 else "user", f"history message {i}")
        tab = self.browser.new_page(viewport={"width": 1000, "height": 800})
        tab.add_init_script(FRAMES_JS)
        tab.set_default_timeout(60_000)
        tab.goto(self.page.session_url(sid))
        if self.push:
            tab.wait_for_selector('.sb-listener[data-status="open"]', state="attached")
        last = f"history message {history - 2}" if history > 1 else "How can I help"
        tab.locator(CHAT_MESSAGE, has_text=last).first.wait_for()
        tab.wait_for_timeout(500)  # let the first reruns finish
        tab.evaluate(OBSERVER_JS, CHAT_MESSAGE)
        self.offset = float(tab.evaluate(CLOCK_JS))
        self.figures.clock_offsets.append(self.offset)
        return sid, tab

    def wait_stamps(
        self,
        tab: Page,
        tags: list[str],
        kinds: tuple[str, ...] = ("seen",),
        timeout_ms: float = 60_000,
    ) -> dict[str, dict[str, float]]:
        """Wall-clock epoch ms of each tag's stamps, once every tag has all of `kinds`."""
        tab.wait_for_function(
            "([tags, kinds]) => kinds.every((k) => tags.every((t) => t in window.__bench[k]))",
            arg=[tags, list(kinds)],
            timeout=timeout_ms,
            polling=50,
        )
        raw: dict[str, dict[str, float]] = tab.evaluate(
            "() => ({seen: window.__bench.seen, chat: window.__bench.chat,"
            " frame: window.__benchFrames})"
        )
        return {k: {t: v + self.offset for t, v in stamps.items()} for k, stamps in raw.items()}

    # -- measurements -----------------------------------------------------------------------

    def latencies(self, condition: str, history: int) -> Probes:
        probes = Probes(load_before=load_average())
        sid, tab = self.session(history)
        posted: dict[str, float] = {}
        busy, started = busy_seconds(), time.monotonic()
        for i in range(self.messages):
            tag = f"{condition[0]}{history}n{i}"
            posted[tag] = time.time() * 1000  # just before the request is written
            self.api.post_message(sid, "ai", f"latency probe {marker(tag)}")
            time.sleep(random.uniform(0.2, 0.4))  # pacing, so the page is mostly idle
        probes.busy_cores = (busy_seconds() - busy) / (time.monotonic() - started)
        stamps = self.wait_stamps(tab, list(posted), ("seen", "chat"))
        tab.close()
        probes.visible = [stamps["seen"][t] - posted[t] for t in posted]
        probes.element = [stamps["chat"][t] - posted[t] for t in posted]
        probes.frame = [stamps["frame"][t] - posted[t] for t in posted if t in stamps["frame"]]
        probes.load_after = load_average()
        self.figures.latency.setdefault(condition, {})[history] = probes
        return probes

    def burst(self) -> None:
        sid, tab = self.session(20)
        tags = [f"b{i}" for i in range(20)]
        last = 0.0
        for tag in tags:
            last = time.time() * 1000  # just before the request is written
            self.api.post_message(sid, "ai", f"burst {marker(tag)}")
        stamps = self.wait_stamps(tab, tags, ("seen", "chat"))
        tab.close()
        self.figures.bursts_visible.append(max(stamps["seen"].values()) - last)
        self.figures.bursts_element.append(max(stamps["chat"].values()) - last)

    def stream(self, condition: str, chunks: int = 100, interval: float = 0.02) -> Stream:
        sid, tab = self.session(20)
        sent: dict[str, float] = {}
        bold, item = 65, 71  # the chunks asked about mid-stream (i % 20 == 5 and == 11)
        paused, resume = threading.Event(), threading.Event()

        def text(i: int) -> str:
            mk = marker(f"s{i}")
            match i % 20:
                case 0:
                    return f"\n\n## Part {i // 20} {mk}\n\n"
                case 5:
                    return f"**bold {mk}** "
                case 10:
                    return f"\n\n- item {mk}\n"
                case 11:
                    return f"- item `code` {mk}\n\n"
                case _:
                    return f"word {mk} "

        def body() -> Iterator[str]:
            deadline = time.monotonic()
            for i in range(chunks):
                if i == item + 1:  # after the bold chunk and the two list items
                    paused.set()
                    resume.wait(30)
                    deadline = time.monotonic()
                deadline += interval
                time.sleep(max(0.0, deadline - time.monotonic()))  # pacing the chunks
                sent[f"s{i}"] = time.time() * 1000
                yield text(i)

        streamer = threading.Thread(target=self.api.stream_reply, args=(sid, body()))
        streamer.start()
        result = Stream()
        paused.wait(60)
        if self.push:  # the polling page shows nothing before the reply is stored
            try:
                self.wait_stamps(tab, [f"s{bold}", f"s{item}"], timeout_ms=5_000)
                tab.wait_for_timeout(100)
                shown = tab.evaluate(
                    MARKDOWN_JS, [marker(f"s{bold}"), marker(f"s{item}"), CHAT_MESSAGE]
                )
                result.strong, result.li = bool(shown["strong"]), bool(shown["li"])
                result.shown = str(shown["html"])
            except Exception as exc:
                print(f"  mid-stream markdown check failed: {exc}", file=sys.stderr)
        resume.set()
        streamer.join()  # the tab stamps by itself; asking it now would only add work
        stamps = self.wait_stamps(tab, [f"s{i}" for i in range(chunks)])
        tab.close()
        result.chunks = [stamps["seen"][t] - sent[t] for t in sent]
        result.frames = [stamps["frame"][t] - sent[t] for t in sent if t in stamps["frame"]]
        self.figures.streams.setdefault(condition, []).append(result)
        return result


# -- load -------------------------------------------------------------------------------------


class CpuLoad:
    """One CPU-bound Python process per core, at the same priority as everything else."""

    def __init__(self) -> None:
        self.cores = (
            len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else (os.cpu_count() or 1)
        )
        self.procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> CpuLoad:
        for _ in range(self.cores):
            self.procs.append(subprocess.Popen([sys.executable, "-c", "while True: pass"]))
        time.sleep(2)
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs:
            stop_process(proc)
        self.procs = []


# -- the table --------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "pass" if ok else "FAIL"


def build_rows(push: Figures, polling: Figures | None) -> list[dict[str, str]]:
    """Rows of figure / condition / target / chat page / polling page / result."""
    rows: list[dict[str, str]] = []

    def add(
        figure: str, target: str, measured: str, polling_cell: str = "", result: str = ""
    ) -> None:
        rows.append(
            {
                "figure": figure,
                "target": target,
                "push": measured,
                "polling": polling_cell,
                "result": result,
            }
        )

    def pair(values: list[float]) -> str:
        return f"{percentile(values, 0.5):.1f} / {percentile(values, 0.95):.1f}"

    def polling_probes(condition: str, history: int) -> Probes | None:
        if polling is None:
            return None
        return polling.latency.get(condition, {}).get(history)

    conditions = [
        (c, h) for c in ("quiet", "busy") for h in (20, 300) if h in push.latency.get(c, {})
    ]
    for condition, history in conditions:
        p = push.latency[condition][history]
        q = polling_probes(condition, history)
        ok = (
            percentile(p.visible, 0.5) <= VISIBLE_P50_MS
            and percentile(p.visible, 0.95) <= VISIBLE_P95_MS
        )
        add(
            f"POST to visible p50 / p95 ms, {history} of history, {condition}",
            f"<= {VISIBLE_P50_MS:.0f} / <= {VISIBLE_P95_MS:.0f}",
            pair(p.visible),
            pair(q.visible) if q else "",
            verdict(ok),
        )
    for condition, history in conditions:
        p = push.latency[condition][history]
        q = polling_probes(condition, history)
        judged = condition == "quiet"
        add(
            f"Streamlit element in place p50 / p95 ms, {history} of history, {condition}",
            f"p95 <= {ELEMENT_P95_MS:.0f}" if judged else "(info)",
            pair(p.element),
            pair(q.element) if q else "",
            verdict(percentile(p.element, 0.95) <= ELEMENT_P95_MS) if judged else "",
        )
    for condition in ("quiet", "busy"):
        streams = push.streams.get(condition)
        if not streams:
            continue
        judged = condition == "quiet"
        value = statistics.median(percentile(s.chunks, 0.95) for s in streams)
        other = polling.streams.get(condition) if polling else None
        add(
            f"stream chunk visible p95 ms, {condition} (median of {len(streams)} x 100 chunks)",
            f"<= {CHUNK_P95_MS:.0f}" if judged else "(info)",
            f"{value:.1f}",
            f"{statistics.median(percentile(s.chunks, 0.95) for s in other):.0f}" if other else "",
            verdict(value <= CHUNK_P95_MS) if judged else "",
        )
    all_streams = [s for streams in push.streams.values() for s in streams]
    if all_streams:
        strong = all(s.strong for s in all_streams)
        li = all(s.li for s in all_streams)
        add(
            "while streaming: **bold** is <strong> / list items are <li>",
            "yes / yes",
            f"{'yes' if strong else 'no'} / {'yes' if li else 'no'}",
            "no / no (nothing shown)",
            verdict(strong and li),
        )
    if push.bursts_visible:
        add(
            f"burst of 20, after the last POST: all visible / all elements, ms "
            f"(median of {len(push.bursts_visible)})",
            "(info)",
            f"{statistics.median(push.bursts_visible):.0f} / "
            f"{statistics.median(push.bursts_element):.0f}",
            f"{statistics.median(polling.bursts_visible):.0f} / "
            f"{statistics.median(polling.bursts_element):.0f}"
            if polling and polling.bursts_visible
            else "",
        )
    for condition, history in conditions:
        q = polling_probes(condition, history)
        if q is None:
            continue
        ratio = percentile(q.visible, 0.5) / percentile(
            push.latency[condition][history].visible, 0.5
        )
        add(
            f"push vs polling, POST to visible p50, {history} of history, {condition}",
            f">= {PUSH_VS_POLLING:.0f}x",
            f"{ratio:.0f}x",
            "",
            verdict(ratio >= PUSH_VS_POLLING),
        )
    return rows


def frame_note(push: Figures) -> str:
    """Where the chat page's time goes: POST (or chunk) to the frame in the tab's JS."""
    parts = []
    for condition in ("quiet", "busy"):
        for history, p in sorted(push.latency.get(condition, {}).items()):
            if p.frame:
                parts.append(
                    f"{condition} {history}: {percentile(p.frame, 0.5):.1f} / "
                    f"{percentile(p.frame, 0.95):.1f}"
                )
    chunks = []
    for condition in ("quiet", "busy"):
        frames = [percentile(s.frames, 0.95) for s in push.streams.get(condition, []) if s.frames]
        if frames:
            chunks.append(f"{condition} {statistics.median(frames):.1f}")
    return (
        "chat page, frame handed to the tab's JavaScript: after the POST p50 / p95 ms "
        + ("; ".join(parts) or "-")
        + "; after a stream chunk, p95 ms "
        + ("; ".join(chunks) or "-")
    )


def render(rows: list[dict[str, str]]) -> str:
    header = ["figure", "target", "chat page (push)", "polling page", "result"]
    keys = ["figure", "target", "push", "polling", "result"]
    widths = [max(len(header[i]), *(len(r[k]) for r in rows)) for i, k in enumerate(keys)]
    right = {1, 2, 3, 4}

    def line(cells: list[str]) -> str:
        return (
            "| "
            + " | ".join(
                c.rjust(w) if i in right else c.ljust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            )
            + " |"
        )

    out = [
        line(header),
        "|"
        + "|".join(
            ("-" * (w + 1) + ":") if i in right else "-" * (w + 2) for i, w in enumerate(widths)
        )
        + "|",
    ]
    out += [line([r[k] for k in keys]) for r in rows]
    return "\n".join(out)


def load_note(push: Figures, polling: Figures | None, cores: int) -> str:
    parts = []
    for condition in ("quiet", "busy"):
        cases = [
            p
            for f in (push, polling)
            if f is not None
            for p in f.latency.get(condition, {}).values()
        ]
        loads = [x for p in cases for x in (p.load_before, p.load_after)]
        cores_busy = [p.busy_cores for p in cases]
        if loads:
            extra = (
                f" with {cores} CPU-bound processes (one per core) running"
                if condition == "busy"
                else ""
            )
            parts.append(
                f"{condition}: 1-min load average {min(loads):.2f}-{max(loads):.2f} "
                f"on {cores} cores, {min(cores_busy):.2f}-{max(cores_busy):.2f} cores busy "
                f"while probing{extra}"
            )
    return "; ".join(parts)


def to_json(figures: Figures) -> dict[str, Any]:
    return asdict(figures)


# -- main -------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Browser benchmark of the chat page.")
    parser.add_argument(
        "--messages",
        type=int,
        default=40,
        help="latency probes per history and condition, chat page",
    )
    parser.add_argument(
        "--polling-messages",
        type=int,
        default=20,
        help="latency probes per history and condition, polling page",
    )
    parser.add_argument("--bursts", type=int, default=2)
    parser.add_argument(
        "--no-busy", action="store_true", help="skip the measurements with the machine busy"
    )
    parser.add_argument(
        "--pages",
        default="push,polling",
        help="which pages to measure (comma-separated: push, polling)",
    )
    parser.add_argument(
        "--json",
        metavar="PATH",
        type=Path,
        default=RESULTS / "browser.json",
        help="also write every figure here (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    kinds = [k for k in ("push", "polling") if k in args.pages.split(",")]
    conditions = ["quiet"] if args.no_busy else ["quiet", "busy"]

    logs = RESULTS / "logs" / time.strftime("browser-%Y%m%d-%H%M%S")
    logs.mkdir(parents=True, exist_ok=True)
    ports = {"push": free_port(), "polling": free_port()}
    origins = ",".join(f"http://127.0.0.1:{p}" for p in ports.values())
    bridge = RunningBridge(
        port=free_port(),
        store="memory://",
        env=bridge_env(BRIDGE_ALLOWED_ORIGINS=origins),
        log_path=logs / "bridge.log",
    )
    started = time.monotonic()
    load = CpuLoad()
    benches: dict[str, Bench] = {}
    chromium = ""
    pages: dict[str, RunningPage] = {}
    bridge.start()
    try:
        for kind in kinds:
            script = PAGE if kind == "push" else POLLING_PAGE
            pages[kind] = RunningPage(
                port=ports[kind],
                bridge_url=bridge.url,
                log_path=logs / f"{kind}.log",
                script=script,
            ).start()
        with BridgeClient(bridge.url) as api, sync_playwright() as playwright:
            api.set_template(Template(write_speed=0.0))
            browser = launch_chromium(playwright)
            chromium = browser.version
            for kind in kinds:
                benches[kind] = Bench(
                    api,
                    browser,
                    pages[kind],
                    push=kind == "push",
                    messages=args.messages if kind == "push" else args.polling_messages,
                )
            for condition in conditions:
                if condition == "busy":
                    load.__enter__()
                try:
                    for kind, bench in benches.items():
                        print(f"{condition}: the {kind} page…", file=sys.stderr, flush=True)
                        for history in (20, 300):
                            p = bench.latencies(condition, history)
                            print(
                                f"  {history} of history: visible p50/p95 "
                                f"{percentile(p.visible, 0.5):.1f}/"
                                f"{percentile(p.visible, 0.95):.1f} ms, element "
                                f"{percentile(p.element, 0.5):.1f}/"
                                f"{percentile(p.element, 0.95):.1f} ms, load "
                                f"{p.load_after:.2f}",
                                file=sys.stderr,
                                flush=True,
                            )
                        streams = (
                            (2 if kind == "push" else 1)
                            if condition == "quiet"
                            else (1 if kind == "push" else 0)
                        )
                        for _ in range(streams):
                            s = bench.stream(condition)
                            shown = f", <strong> {s.strong}, <li> {s.li}" if bench.push else ""
                            if bench.push and not (s.strong and s.li):
                                shown += f"; shown: {s.shown}"
                            print(
                                f"  stream: chunk p95 {percentile(s.chunks, 0.95):.1f} ms{shown}",
                                file=sys.stderr,
                                flush=True,
                            )
                        if condition == "quiet":
                            for _ in range(args.bursts):
                                bench.burst()
                finally:
                    if condition == "busy":
                        load.__exit__()
            browser.close()
    finally:
        load.__exit__()
        for page in pages.values():
            page.stop()
        bridge.stop()

    elapsed = time.monotonic() - started
    push = benches["push"].figures if "push" in benches else None
    polling = benches["polling"].figures if "polling" in benches else None
    rows = build_rows(push, polling) if push is not None else []
    if push is not None:
        print(render(rows))
        print()
        print(frame_note(push))
        print(load_note(push, polling, load.cores))
    offsets = [o for b in benches.values() for o in b.figures.clock_offsets]
    print(
        f"Streamlit {_version('streamlit')}, Chromium {chromium}, Python "
        f"{platform.python_version()}; page clock vs Date.now(): "
        f"{min(offsets):+.2f} to {max(offsets):+.2f} ms (corrected); "
        f"{elapsed:.0f} s; logs in {logs}"
    )
    failed = [r["figure"] for r in rows if r["result"] == "FAIL"]
    print(f"targets: {sum(r['result'] == 'pass' for r in rows)} pass, {len(failed)} fail")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                    "seconds": round(elapsed, 1),
                    "streamlit": _version("streamlit"),
                    "chromium": chromium,
                    "cores": load.cores,
                    "rows": rows,
                    "pages": {k: to_json(b.figures) for k, b in benches.items()},
                },
                indent=1,
            )
        )
        print(f"figures written to {args.json}")
    return 0


def _version(package: str) -> str:
    from importlib.metadata import version

    try:
        return version(package)
    except Exception:
        return "?"


if __name__ == "__main__":
    sys.exit(main())
