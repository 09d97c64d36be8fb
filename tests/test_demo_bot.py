"""The demo bot against a real bridge: Listen in, a reply streamed word by word out."""

from __future__ import annotations

import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator

import pytest

from streamlit_client import demo_bot
from streamlit_client.client import BridgeClient
from streamlit_client.models import Listened, Message
from tests.support import ROOT, RunningBridge, wait_until
from tests.test_client import Collector

StartBridge = Callable[..., RunningBridge]


@pytest.fixture
def api(bridge: RunningBridge) -> Iterator[BridgeClient]:
    with BridgeClient(bridge.url) as client:
        yield client


def reply_to(text: str, turn: int) -> str:
    """The demo bot's answer, written out here rather than taken from the bot's code."""
    return (
        f"You said: {text} — I am the demo bot, and this reply is streamed to every open "
        f"tab word by word through the bridge (turn {turn} of this chat)."
    )


def message(seq: int, role: str, content: str) -> Message:
    return Message.from_dict({"seq": seq, "role": role, "content": content})


def test_the_reply_is_deterministic_and_counts_turns() -> None:
    history = (message(1, "ai", "welcome"), message(2, "user", "x"), message(3, "ai", "y"))
    listened = Listened(message(4, "user", " hi  there "), history)
    assert demo_bot.compose_reply(listened) == reply_to("hi there", 2)
    assert list(demo_bot.words("a b  c", 0)) == ["a", " b", " ", " c"]


def test_the_bot_streams_its_answer_word_by_word(start_bridge: StartBridge) -> None:
    # The bridge merges deltas that come within BRIDGE_STREAM_COALESCE_S; at 0 each chunk
    # the bot sends is one delta, so the socket shows exactly how the bot chunked it.
    bridge = start_bridge(env={"BRIDGE_STREAM_COALESCE_S": "0"})
    api = BridgeClient(bridge.url)
    sid = f"bot-{uuid.uuid4().hex[:8]}"
    api.create_session(sid)
    stop = threading.Event()
    bot = threading.Thread(
        target=demo_bot.run, args=(bridge.url,),
        kwargs={"listen_timeout": 1.0, "word_delay": 0.0, "stop": stop}, daemon=True,
    )
    bot.start()
    collector = Collector(api.subscribe(sid, after=1))
    try:
        collector.wait_for(lambda: bool(collector.kinds("hello")), "hello")
        api.post_message(sid, "user", "ping")
        collector.wait_for(lambda: bool(collector.kinds("stream.end")), "the streamed reply")
        expected = reply_to("ping", 1)  # the welcome before it is the bot's, not a turn
        deltas = [e["delta"] for e in collector.kinds("stream.delta")]
        assert deltas[:4] == ["You", " said:", " ping", " —"]  # one word per chunk
        assert "".join(deltas) == expected
        assert len(deltas) == len(expected.split(" "))
        end = collector.kinds("stream.end")[0]["message"]
        assert (end["seq"], end["role"], end["content"]) == (3, "ai", expected)
        assert api.messages(sid)[-1].content == expected
    finally:
        collector.close()
        stop.set()
        bot.join(5)
        api.close()
    assert not bot.is_alive()


def test_python_dash_m_runs_the_bot(bridge: RunningBridge, api: BridgeClient) -> None:
    sid = f"bot-{uuid.uuid4().hex[:8]}"
    process = subprocess.Popen(
        [sys.executable, "-m", "streamlit_client.demo_bot", "--bridge", bridge.url,
         "--word-delay", "0", "--listen-timeout", "1"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        api.post_message(sid, "user", "hello bot")
        wait_until(lambda: len(api.messages(sid)) == 3, 15, "the bot's reply")
        reply = api.messages(sid)[-1]
        assert (reply.role, reply.content) == ("ai", reply_to("hello bot", 1))
    finally:
        process.terminate()
        process.wait(10)
