"""A demo bot: answers each user message, streaming the reply word by word.

It shows the whole loop without Langflow: it takes user messages through Listen
(`GET /api/v1/listen/message`, a long-poll) and streams its reply through
`POST /api/v1/sessions/{id}/messages/stream`, so every open tab sees the reply grow.

    python -m streamlit_client.demo_bot --bridge http://127.0.0.1:7881
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator, Sequence

import httpx

from bridge.wire import DEFAULT_BRIDGE_URL, Listened
from streamlit_client.client import BridgeClient, BridgeHTTPError

__all__ = ["compose_reply", "main", "run", "words"]

log = logging.getLogger(__name__)


def compose_reply(listened: Listened) -> str:
    """The bot's answer to a user message (deterministic, so tests can expect it)."""
    text = " ".join(listened.message.content.split())
    turns = 1 + sum(1 for m in listened.history if m.role == "user")
    return (
        f"You said: {text} — I am the demo bot, and this reply is streamed to every open "
        f"tab word by word through the bridge (turn {turns} of this chat)."
    )


def words(text: str, delay: float) -> Iterator[str]:
    """`text` in chunks of one word (with its leading space), `delay` s apart."""
    for index, word in enumerate(text.split(" ")):
        if index and delay > 0:
            time.sleep(delay)  # pacing the demo stream, not synchronisation
        yield word if index == 0 else " " + word


def run(
    bridge_url: str,
    *,
    api_key: str | None = None,
    listen_timeout: float = 30.0,
    word_delay: float = 0.08,
    stop: threading.Event | None = None,
) -> None:
    """Answer user messages until `stop` is set (or forever); blocking.

    A bridge that is down or restarting is retried with backoff: the bot is meant to be
    started together with the bridge and to outlive its restarts.
    """
    stop = stop or threading.Event()
    failures = 0
    with BridgeClient(bridge_url, api_key=api_key) as client:
        log.info("demo bot listening on %s", bridge_url)
        while not stop.is_set():
            try:
                listened = client.listen(timeout=listen_timeout)
                failures = 0
                if listened is None:
                    continue
                reply = compose_reply(listened)
                client.stream_reply(listened.session_id, words(reply, word_delay))
                log.info("answered session %s", listened.session_id)
            except (BridgeHTTPError, httpx.HTTPError) as exc:
                failures += 1
                delay = min(5.0, 0.2 * 2 ** min(failures, 5))
                log.warning("bridge unavailable (%s); retrying in %.1f s", exc, delay)
                stop.wait(delay)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m streamlit_client.demo_bot [--bridge URL] [--word-delay S] [--api-key K]`."""
    parser = argparse.ArgumentParser(description="Answer chat messages, streamed word by word.")
    parser.add_argument("--bridge", default=os.environ.get("BRIDGE_URL", DEFAULT_BRIDGE_URL))
    parser.add_argument("--api-key", default=os.environ.get("BRIDGE_API_KEY"))
    parser.add_argument(
        "--word-delay", type=float, default=0.08, help="seconds between the words of a reply"
    )
    parser.add_argument(
        "--listen-timeout", type=float, default=30.0, help="seconds one Listen long-poll waits"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s demo-bot %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        run(
            args.bridge,
            api_key=args.api_key,
            word_delay=args.word_delay,
            listen_timeout=args.listen_timeout,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
