"""The demo bot against a real bridge: Listen in, a reply streamed word by word out."""

from __future__ import annotations

import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator

import pytest

from streamlit_client import demo_bot
from streamlit_client.client import BridgeClient
from streamlit_client.models import Listened, Message
from tests.support import ROOT, RunningBridge, wait_until
from tests.test_client import Collector


@pytest.fixture
def api(bridge: RunningBridge) -> Iterator[BridgeClient]:
    with BridgeClient(bridge.url) as client:
        yield client


def test_the_reply_is_deterministic_and_counts_turns() -> None:
    listened = Listened(Message(4, "user", " hi  there "), (Message(2, "user", "x"),))
    reply = demo_bot.compose_reply(listened)
    assert reply.startswith("You said: hi there") and "(turn 2 of this chat)" in reply
    assert "".join(demo_bot.words("a b  c", 0)) == "a b  c"


def test_the_bot_streams_its_answer_word_by_word(bridge: RunningBridge, api: BridgeClient) -> None:
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
        question = api.post_message(sid, "user", "ping")
        collector.wait_for(lambda: bool(collector.kinds("stream.end")), "the streamed reply")
        expected = demo_bot.compose_reply(Listened(question, (api.messages(sid)[0],)))
        deltas = [e["delta"] for e in collector.kinds("stream.delta")]
        assert "".join(deltas) == expected
        assert len(deltas) == len(expected.split(" "))
        assert collector.kinds("stream.end")[0]["message"]["content"] == expected
    finally:
        collector.close()
        stop.set()
        bot.join(5)
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
        assert reply.role == "ai" and reply.content.startswith("You said: hello bot")
    finally:
        process.terminate()
        process.wait(10)
