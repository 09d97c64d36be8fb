"""Browser benchmark of the chat page against a page that polls like the original.

    python -m bench.browser            (make bench-browser)

Starts a real bridge (`memory://`, so storage does not count), the real chat page and
the reference polling page (`bench/browser_polling_page.py`: `sleep(2); st.rerun()`
re-reading the history), drives each in Debian's Chromium, and prints one table:

- POST-to-DOM latency, p50 and p95, over `--messages` messages posted at random
  0.2-0.4 s intervals, into a session with 20 and with 300 messages of history;
- burst: 20 POSTs back to back, time from the last POST's answer until all 20 are in the
  DOM (median of `--bursts` bursts);
- stream chunk latency p95: a 100-chunk streamed reply, one chunk every 20 ms, time from
  the chunk being handed to the HTTP client until its text is in the DOM.

Time is measured by a MutationObserver in the page that stamps, with the wall clock, the
first time each marker text appears; the same machine's wall clock stamps the POSTs.
The typing effect is switched off (`write_speed=0`) so that delivery, not a cosmetic
delay, is measured.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from playwright.sync_api import Browser, Page, sync_playwright

from streamlit_client.client import BridgeClient
from streamlit_client.launcher import PAGE
from streamlit_client.models import Template
from tests.browser_support import RunningPage, launch_chromium
from tests.support import RunningBridge, bridge_env, free_port

POLLING_PAGE = Path(__file__).resolve().parent / "browser_polling_page.py"

# Stamps the first appearance of each `MK-<id>-KM` marker in the DOM.
OBSERVER_JS = """
() => {
  if (window.__seen) return;
  window.__seen = {};
  const scan = (text, at) => {
    if (!text || text.indexOf('MK-') < 0) return;
    for (const m of text.matchAll(/MK-([A-Za-z0-9_.]+)-KM/g)) {
      if (!(m[1] in window.__seen)) window.__seen[m[1]] = at;
    }
  };
  new MutationObserver((mutations) => {
    const at = performance.timeOrigin + performance.now();
    for (const mu of mutations) {
      if (mu.type === 'characterData') scan(mu.target.data, at);
      for (const node of mu.addedNodes) scan(node.textContent, at);
    }
  }).observe(document.body, {childList: true, subtree: true, characterData: true});
}
"""


def marker(tag: str) -> str:
    return f"MK-{tag}-KM"


@dataclass
class Figures:
    """What one page measured (milliseconds)."""

    latency: dict[int, list[float]] = field(default_factory=dict)
    bursts: list[float] = field(default_factory=list)
    chunk_p95: list[float] = field(default_factory=list)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


class Bench:
    """Runs every measurement against one page kind."""

    def __init__(self, api: BridgeClient, browser: Browser, page: RunningPage, *,
                 push: bool, messages: int, bursts: int) -> None:
        self.api = api
        self.browser = browser
        self.page = page
        self.push = push
        self.messages = messages
        self.bursts = bursts

    def run(self) -> Figures:
        figures = Figures()
        for history in (20, 300):
            figures.latency[history] = self.latencies(history)
        for _ in range(self.bursts):
            figures.bursts.append(self.burst())
        for _ in range(2):
            figures.chunk_p95.append(percentile(self.stream(), 0.95))
        return figures

    # -- one session per measurement ------------------------------------------------------

    def session(self, history: int) -> tuple[str, Page]:
        sid = f"bench-{uuid.uuid4().hex[:10]}"
        self.api.create_session(sid)  # the welcome message is message 1
        for i in range(history - 1):
            self.api.post_message(sid, "ai" if i % 2 else "user", f"history message {i}")
        tab = self.browser.new_page(viewport={"width": 1000, "height": 800})
        tab.set_default_timeout(30_000)
        tab.goto(self.page.session_url(sid))
        if self.push:
            tab.wait_for_selector('.sb-listener[data-status="open"]', state="attached")
        last = f"history message {history - 2}" if history > 1 else "How can I help"
        tab.get_by_text(last, exact=True).wait_for()
        tab.evaluate(OBSERVER_JS)
        return sid, tab

    def wait_seen(self, tab: Page, tags: list[str], timeout_ms: float = 30_000) -> dict[str, float]:
        tab.wait_for_function(
            "(tags) => tags.every((t) => t in window.__seen)", arg=tags, timeout=timeout_ms,
            polling=20,
        )
        seen: dict[str, float] = tab.evaluate("(tags) => tags.map((t) => window.__seen[t])", tags)
        return dict(zip(tags, seen, strict=True))

    def latencies(self, history: int) -> list[float]:
        sid, tab = self.session(history)
        posted: dict[str, float] = {}
        for i in range(self.messages):
            tag = f"l{history}_{i}"
            self.api.post_message(sid, "ai", f"latency probe {marker(tag)}")
            posted[tag] = time.time() * 1000
            time.sleep(random.uniform(0.2, 0.4))  # pacing, so the page is mostly idle
        seen = self.wait_seen(tab, list(posted))
        tab.close()
        return [seen[t] - posted[t] for t in posted]

    def burst(self) -> float:
        sid, tab = self.session(20)
        tags = [f"b{i}" for i in range(20)]
        for tag in tags:
            self.api.post_message(sid, "ai", f"burst {marker(tag)}")
        last_answer = time.time() * 1000
        seen = self.wait_seen(tab, tags)
        tab.close()
        return max(seen.values()) - last_answer

    def stream(self, chunks: int = 100, interval: float = 0.02) -> list[float]:
        sid, tab = self.session(20)
        sent: dict[str, float] = {}

        def body() -> Iterator[str]:
            deadline = time.monotonic()
            for i in range(chunks):
                deadline += interval
                time.sleep(max(0.0, deadline - time.monotonic()))  # pacing the chunks
                tag = f"s{i}"
                sent[tag] = time.time() * 1000
                yield f"{marker(tag)} "

        streamer = threading.Thread(target=self.api.stream_reply, args=(sid, body()))
        streamer.start()
        seen = self.wait_seen(tab, [f"s{i}" for i in range(chunks)], timeout_ms=60_000)
        streamer.join()
        tab.close()
        return [seen[t] - sent[t] for t in sent]


def table(push: Figures, polling: Figures) -> str:
    def pair(values: list[float]) -> str:
        return f"{percentile(values, 0.5):.0f} / {percentile(values, 0.95):.0f}"

    rows = [
        ("POST-to-DOM p50 / p95 ms, 20 messages of history",
         pair(push.latency[20]), pair(polling.latency[20]), "<= 100 / <= 150"),
        ("POST-to-DOM p50 / p95 ms, 300 messages of history",
         pair(push.latency[300]), pair(polling.latency[300]), "p50 <= 200"),
        (f"burst of 20: all shown after the last POST, ms (median of {len(push.bursts)})",
         f"{statistics.median(push.bursts):.0f}", f"{statistics.median(polling.bursts):.0f}",
         "<= 300"),
        ("stream chunk latency p95 ms (median of 2 streams of 100 chunks)",
         f"{statistics.median(push.chunk_p95):.1f}",
         f"{statistics.median(polling.chunk_p95):.0f}", "<= 20"),
        ("p50 with 20 of history: polling / push",
         f"{percentile(polling.latency[20], 0.5) / percentile(push.latency[20], 0.5):.1f}x",
         "", ">= 10x"),
    ]
    lines = ["| figure | chat page (push) | polling page (original) | target |",
             "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return "\n".join(lines)


def summary(figures: Figures) -> str:
    """One line of the main figures of one page."""
    parts = [
        f"{h} history p50/p95 {percentile(v, 0.5):.0f}/{percentile(v, 0.95):.0f} ms"
        for h, v in figures.latency.items()
    ]
    parts.append(f"burst {statistics.median(figures.bursts):.0f} ms")
    parts.append(f"chunk p95 {statistics.median(figures.chunk_p95):.1f} ms")
    return "; ".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Browser benchmark of the chat page.")
    parser.add_argument("--messages", type=int, default=30, help="latency probes per history")
    parser.add_argument("--bursts", type=int, default=3)
    parser.add_argument("--pages", default="push,polling",
                        help="which pages to measure (comma-separated: push, polling)")
    args = parser.parse_args(argv)
    kinds = [k for k in ("push", "polling") if k in args.pages.split(",")]

    tmp = Path(tempfile.mkdtemp(prefix="bench-browser-"))
    ports = {"push": free_port(), "polling": free_port()}
    origins = ",".join(f"http://127.0.0.1:{p}" for p in ports.values())
    bridge = RunningBridge(port=free_port(), store="memory://",
                           env=bridge_env(BRIDGE_ALLOWED_ORIGINS=origins),
                           log_path=tmp / "bridge.log")
    bridge.start()
    results: dict[str, Figures] = {}
    started = time.monotonic()
    try:
        with BridgeClient(bridge.url) as api, sync_playwright() as playwright:
            api.set_template(Template(write_speed=0.0))
            browser = launch_chromium(playwright)
            for kind in kinds:
                script = PAGE if kind == "push" else POLLING_PAGE
                page = RunningPage(port=ports[kind], bridge_url=bridge.url,
                                   log_path=tmp / f"{kind}.log", script=script).start()
                try:
                    print(f"measuring the {kind} page…", file=sys.stderr, flush=True)
                    results[kind] = Bench(api, browser, page, push=kind == "push",
                                          messages=args.messages, bursts=args.bursts).run()
                finally:
                    page.stop()
            browser.close()
    finally:
        bridge.stop()
    if len(results) == 2:
        print(table(results["push"], results["polling"]))
    for kind, figures in results.items():
        print(f"{kind}: " + summary(figures))
    print(f"\n({time.monotonic() - started:.0f} s; logs in {tmp})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
