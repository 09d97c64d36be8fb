"""The Langflow components against a real bridge (`python -m bridge serve`, memory store).

Each component is built from its file's source (as Langflow does), its inputs set, and its
outputs awaited; what it did is checked through the bridge's HTTP API and a real WebSocket
subscriber.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import lfx  # noqa: F401  (the `langflow` extra: missing is a failure, never a skip)
import pytest
from websockets.asyncio.client import connect as ws_connect

from tests.langflow_support import LFX_WARNING_FILTERS, make_component
from tests.support import RunningBridge, bridge_env, free_port

pytestmark = [pytest.mark.langflow, *(pytest.mark.filterwarnings(f) for f in LFX_WARNING_FILTERS)]

WAIT = 10.0  # seconds: upper bound of every wait for an event; a pass never waits this long


@pytest.fixture(scope="module")
def shared_bridge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningBridge]:
    """One bridge for the tests that touch only their own sessions (saves a start per test).

    Listen and Last Session tests take a fresh `bridge`: they see bridge-wide state (the queue
    of unclaimed user messages, the newest session).
    """
    log_path = tmp_path_factory.mktemp("shared-bridge") / "bridge.log"
    running = RunningBridge(free_port(), "memory://", bridge_env(), log_path).start()
    yield running
    running.stop()


def post(bridge: RunningBridge, session: str, role: str, content: str) -> dict[str, Any]:
    response = httpx.post(
        f"{bridge.url}/api/v1/sessions/{session}/messages", json={"role": role, "content": content}
    )
    response.raise_for_status()
    return response.json()


def history(bridge: RunningBridge, session: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{bridge.url}/api/v1/sessions/{session}/messages", params={"limit": 0})
    response.raise_for_status()
    return response.json()


class Subscriber:
    """A WebSocket subscriber of one session, reading live events with bounded waits."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.hello: dict[str, Any] = {}

    async def next_event(self, *kinds: str) -> dict[str, Any]:
        """The next live event of one of `kinds` (others, and the history replay, are skipped);
        fails after WAIT seconds."""
        replayed_upto = self.hello.get("last_seq", 0)
        async with asyncio.timeout(WAIT):
            while True:
                event = json.loads(await self.ws.recv())
                if event.get("event") == "message" and event["seq"] <= replayed_upto:
                    continue  # history sent on connect, not something that happened since
                if event.get("event") in kinds:
                    return event


@asynccontextmanager
async def subscribe(bridge: RunningBridge, session: str) -> AsyncIterator[Subscriber]:
    """Subscribe to a session as a chat tab does."""
    async with ws_connect(f"{bridge.ws_url}/api/v1/sessions/{session}/ws") as ws:
        subscriber = Subscriber(ws)
        subscriber.hello = await subscriber.next_event("hello")
        yield subscriber


# ------------------------------------------------------------------------------------- Send


async def test_send_stores_the_message_and_a_subscriber_sees_it(
    shared_bridge: RunningBridge,
) -> None:
    async with subscribe(shared_bridge, "send-1") as tab:
        send = make_component(
            "send", base_url=shared_bridge.url, session_id="send-1", message="Hello **there**"
        )
        results, _ = await send.run()  # the same path Langflow takes to build a node

        stored = json.loads(results["text"].text)
        assert stored["session_id"] == "send-1"
        assert (stored["role"], stored["content"], stored["type"]) == (
            "ai",
            "Hello **there**",
            "text",
        )
        pushed = await tab.next_event("message")
        assert pushed["message"]["id"] == stored["id"]
        assert pushed["seq"] == stored["seq"]
    assert history(shared_bridge, "send-1")[-1]["content"] == "Hello **there**"


async def test_send_takes_connected_messages_and_the_documented_host_and_port(
    shared_bridge: RunningBridge,
) -> None:
    """Listen's outputs arrive as Message objects; hostname + port is the documented address."""
    from lfx.schema.message import Message

    send = make_component(
        "send",
        hostname="127.0.0.1",
        port=shared_bridge.port,
        session_id=Message(text="send-2"),
        message=Message(text="from a connected output"),
        role="user",
    )
    stored = json.loads((await send.text_response()).text)
    assert (stored["session_id"], stored["role"]) == ("send-2", "user")
    assert stored["content"] == "from a connected output"


async def test_base_url_overrides_hostname_and_port(shared_bridge: RunningBridge) -> None:
    send = make_component(
        "send",
        base_url=shared_bridge.url + "/",
        hostname="nowhere.invalid",
        port=1,
        session_id="send-3",
        message="via base url",
    )
    stored = json.loads((await send.text_response()).text)
    assert stored["content"] == "via base url"


async def test_send_shows_the_bridges_own_refusal(shared_bridge: RunningBridge) -> None:
    """A session id the bridge rejects: its 4xx detail, not an httpx traceback."""
    send = make_component("send", base_url=shared_bridge.url, session_id="a/b?c=1 d", message="x")
    with pytest.raises(RuntimeError) as caught:
        await send.text_response()
    message = str(caught.value)
    assert "refused POST /api/v1/sessions/a%2Fb%3Fc%3D1%20d/messages (HTTP 4" in message
    assert "session id" in message.lower()  # the bridge's detail is passed on
    assert caught.value.__cause__ is None


async def test_send_rerun_does_nothing_nested_and_returns(shared_bridge: RunningBridge) -> None:
    """The documented default (rerun on) must not run the flow inside itself: Send returns."""
    send = make_component("send", base_url=shared_bridge.url, session_id="send-4", message="once")
    assert send.rerun is True
    async with asyncio.timeout(WAIT):
        await send.text_response()
    assert "no Langflow URL" in send.status
    assert [m["content"] for m in history(shared_bridge, "send-4")][-1] == "once"


# ----------------------------------------------------------------------------------- Listen


async def test_listen_receives_a_typed_user_message_with_its_history(bridge: RunningBridge) -> None:
    post(bridge, "listen-1", "ai", "earlier answer")
    post(bridge, "listen-1", "user", "what is 2+2?")
    post(bridge, "listen-1", "user", "and 3+3?")  # typed before anyone listened: kept

    listen = make_component("listen", base_url=bridge.url, timeout=5)
    results, _ = await listen.run()  # one run builds all four outputs

    assert results["session_id"].text == "listen-1"
    assert results["message_content"].text == "what is 2+2?"
    assert results["message_content"].sender == "User"
    earlier = results["chat_history"].data
    assert earlier["session_id"] == "listen-1"
    welcome, answer = earlier["history"]  # every session starts with the welcome message
    assert (welcome["role"], answer["role"], answer["content"]) == ("ai", "ai", "earlier answer")
    assert results["history_text"].text == f"ai: {welcome['content']}\nai: earlier answer"

    # The next run waits afresh and gets the next message: the outputs of one run shared one
    # long poll, so the second message was not taken by the first run.
    results, _ = await listen.run()
    assert results["message_content"].text == "and 3+3?"
    assert [m["content"] for m in results["chat_history"].data["history"]][-1] == "what is 2+2?"


async def test_listen_waits_for_a_message_typed_later(bridge: RunningBridge) -> None:
    listen = make_component("listen", base_url=bridge.url, timeout=5)
    waiting = asyncio.create_task(listen.message_content_response())
    await asyncio.to_thread(post, bridge, "listen-2", "user", "typed while listening")
    async with asyncio.timeout(WAIT):
        message = await waiting
    assert message.text == "typed while listening"
    assert (await listen.session_id_response()).text == "listen-2"  # same message, no 2nd poll


async def test_listen_sends_the_template_and_times_out_clearly(bridge: RunningBridge) -> None:
    post(bridge, "listen-3", "ai", "an ai message is not for Listen")
    listen = make_component(
        "listen",
        base_url=bridge.url,
        timeout=1,
        welcome_msg="Hi from Langflow",
        input_msg="Ask me",
        write_speed=0.05,
        user_avatar="🧑",
        apply_template=True,
    )
    # A timeout is a normal outcome: empty output and a status, not a build error.
    assert (await listen.session_id_response()).text == ""
    assert listen.status.startswith("No user message within 1 s")

    async with subscribe(bridge, "listen-new") as tab:
        template = tab.hello["template"]
    assert (template["welcome_msg"], template["input_msg"]) == ("Hi from Langflow", "Ask me")
    assert (template["write_speed"], template["ai_avatar"]) == (0.05, "🤖")
    assert template["user_avatar"] == "🧑"


async def test_listen_can_leave_the_template_alone(bridge: RunningBridge) -> None:
    chat = make_component("chat_template", base_url=bridge.url, welcome_msg="Set by template")
    await chat.text_response()
    listen = make_component(
        "listen", base_url=bridge.url, timeout=1, apply_template=False, welcome_msg="Not this"
    )
    assert (await listen.session_id_response()).text == ""
    post(bridge, "listen-4", "user", "hi")
    assert history(bridge, "listen-4")[0]["content"] == "Set by template"


# -------------------------------------------------------------------- Chat Template, reading


async def test_chat_template_is_pushed_and_starts_new_sessions(
    shared_bridge: RunningBridge,
) -> None:
    async with subscribe(shared_bridge, "tpl-open-tab") as tab:
        chat = make_component(
            "chat_template",
            base_url=shared_bridge.url,
            welcome_msg="Welcome to the demo",
            input_msg="Say something",
            write_speed=0,
            ai_avatar="",
        )
        answer = json.loads((await chat.text_response()).text)
        assert answer["welcome_msg"] == "Welcome to the demo"
        pushed = await tab.next_event("template")
    assert pushed["template"]["input_msg"] == "Say something"
    assert pushed["template"]["write_speed"] == 0
    assert not pushed["template"].get("ai_avatar")  # empty avatar left out, not sent as ""
    post(shared_bridge, "tpl-new", "user", "hi")
    first = history(shared_bridge, "tpl-new")[0]
    assert (first["role"], first["content"]) == ("ai", "Welcome to the demo")


async def test_get_session_messages_reads_the_newest_messages(shared_bridge: RunningBridge) -> None:
    for i in range(3):
        post(shared_bridge, "read-1", "user" if i % 2 else "ai", f"m{i}")

    reader = make_component(
        "get_session_messages", base_url=shared_bridge.url, session_id="read-1", limit=2
    )
    results, _ = await reader.run()
    as_text = json.loads(results["text"].text)
    assert [m["content"] for m in as_text] == ["m1", "m2"]
    assert results["data"].data == {"session_id": "read-1", "messages": as_text}

    everything = make_component(
        "get_session_messages", base_url=shared_bridge.url, session_id="read-1", limit=0
    )
    contents = [m["content"] for m in json.loads((await everything.text_response()).text)]
    assert contents[1:] == ["m0", "m1", "m2"]  # after the welcome message


async def test_get_session_messages_of_an_unknown_session_says_so(
    shared_bridge: RunningBridge,
) -> None:
    reader = make_component("get_session_messages", base_url=shared_bridge.url, session_id="nobody")
    with pytest.raises(LookupError, match="has no session 'nobody'"):
        await reader.text_response()


async def test_get_last_session(bridge: RunningBridge) -> None:
    last = make_component("get_last_session", base_url=bridge.url)
    with pytest.raises(LookupError, match="no chat session yet"):
        await last.text_response()
    post(bridge, "first", "user", "1")
    post(bridge, "second", "user", "2")
    post(bridge, "first", "user", "3")  # newest *created* session, not newest message
    assert (await last.text_response()).text == "second"


# ----------------------------------------------------------------------------------- Stream


def gated_fake_model(text: str, gate: asyncio.Event, log: list[str]) -> Any:
    """A fake chat model (langchain's own) that streams `text` word by word, but holds back
    everything after the first chunk until `gate` is set, and logs what it produced."""
    from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
    from langchain_core.messages import AIMessage

    class GatedModel(GenericFakeChatModel):
        async def _astream(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
            async for chunk in super()._astream(*args, **kwargs):
                log.append(chunk.message.content)
                yield chunk
                if len(log) == 1:
                    async with asyncio.timeout(WAIT):  # fails the test if never released
                        await gate.wait()
            log.append("<done>")

    return GatedModel(messages=iter([AIMessage(content=text)]))


async def test_stream_reaches_a_subscriber_before_the_model_has_finished(
    shared_bridge: RunningBridge,
) -> None:
    reply = "Streaming tokens one by one"
    gate = asyncio.Event()
    produced: list[str] = []
    model = gated_fake_model(reply, gate, produced)

    async with subscribe(shared_bridge, "stream-1") as tab:
        stream = make_component(
            "stream",
            base_url=shared_bridge.url,
            session_id="stream-1",
            model=model,
            input_value="say something",
        )
        streaming = asyncio.create_task(stream.stream_response())

        start = await tab.next_event("stream.start")
        first = await tab.next_event("stream.delta")
        # The model is held after its first chunk: this delta crossed bridge and socket live.
        assert produced == ["Streaming"] and "<done>" not in produced
        assert (first["delta"], first["stream_id"], start["role"]) == (
            "Streaming",
            start["stream_id"],
            "ai",
        )
        gate.set()

        deltas = [first["delta"]]
        while True:
            event = await tab.next_event("stream.delta", "stream.end")
            if event["event"] == "stream.end":
                break
            deltas.append(event["delta"])
        async with asyncio.timeout(WAIT):
            result = await streaming

    assert len(deltas) >= 2
    assert "".join(deltas) == reply
    assert event["message"]["content"] == reply
    assert result.text == reply
    assert history(shared_bridge, "stream-1")[-1]["content"] == reply
    assert produced[-1] == "<done>"


async def test_stream_reports_a_failing_model(shared_bridge: RunningBridge) -> None:
    from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
    from langchain_core.messages import AIMessage

    class BrokenModel(GenericFakeChatModel):
        async def _astream(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
            count = 0
            async for chunk in super()._astream(*args, **kwargs):
                yield chunk
                count += 1
                if count == 2:
                    raise RuntimeError("provider went away")

    stream = make_component(
        "stream",
        base_url=shared_bridge.url,
        session_id="stream-2",
        input_value="hi",
        model=BrokenModel(messages=iter([AIMessage(content="partial answer here")])),
    )
    async with subscribe(shared_bridge, "stream-2") as tab:
        with pytest.raises(
            RuntimeError, match=r"language model failed after 2 chunk\(s\).*provider went away"
        ):
            await stream.stream_response()
        # The tab is told the reply stopped (the request was cut short), not left half-drawn.
        start = await tab.next_event("stream.start")
        aborted = await tab.next_event("stream.abort", "stream.end")
    assert (aborted["event"], aborted["stream_id"]) == ("stream.abort", start["stream_id"])
    assert "partial" not in [m["content"] for m in history(shared_bridge, "stream-2")][-1]


async def test_stream_checks_the_bridge_before_spending_tokens() -> None:
    from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
    from langchain_core.messages import AIMessage

    from tests.support import free_port

    calls: list[str] = []

    class CountingModel(GenericFakeChatModel):
        async def _astream(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
            calls.append("called")
            async for chunk in super()._astream(*args, **kwargs):
                yield chunk

    port = free_port()
    stream = make_component(
        "stream",
        hostname="127.0.0.1",
        port=port,
        session_id="s",
        input_value="hi",
        model=CountingModel(messages=iter([AIMessage(content="never used")])),
    )
    with pytest.raises(
        ConnectionError, match=f"Cannot reach the Streamlit bridge at http://127.0.0.1:{port}"
    ):
        await stream.stream_response()
    assert calls == []


# ------------------------------------------------------------------------------------- Auth


async def test_api_key_is_sent_and_a_missing_key_is_explained(start_bridge: Any) -> None:
    keyed = start_bridge(env={"BRIDGE_API_KEY": "k-123"})
    async with httpx.AsyncClient() as client:
        probe = await client.post(
            f"{keyed.url}/api/v1/sessions/auth-probe/messages", json={"role": "ai", "content": "x"}
        )
    # The bridge enforces its key: without this, the component's 401 message is untested.
    assert probe.status_code == 401, (probe.status_code, probe.text)

    without = make_component("send", base_url=keyed.url, session_id="auth-1", message="x")
    with pytest.raises(RuntimeError, match=r"HTTP 401.*Set the API Key input"):
        await without.text_response()
    with_key = make_component(
        "send", base_url=keyed.url, session_id="auth-1", message="x", api_key="k-123"
    )
    assert json.loads((await with_key.text_response()).text)["content"] == "x"


async def test_stop_in_the_chat_ends_the_stream_component_and_its_model(
    shared_bridge: RunningBridge,
) -> None:
    """Stop (here over HTTP, as the page's button does over its socket) cuts the reply:
    the component returns the stored partial reply and asks the model for nothing more."""
    gate = asyncio.Event()
    produced: list[str] = []
    words = " ".join(f"w{n}" for n in range(60))  # more than a closed socket accepts
    model = gated_fake_model(words, gate, produced)
    async with subscribe(shared_bridge, "stream-stop") as tab:
        stream = make_component(
            "stream",
            base_url=shared_bridge.url,
            session_id="stream-stop",
            model=model,
            input_value="go on",
        )
        streaming = asyncio.create_task(stream.stream_response())
        await tab.next_event("stream.delta")  # the model is held after its first chunk
        async with httpx.AsyncClient(base_url=shared_bridge.url, timeout=WAIT) as http:
            assert (await http.post("/api/v1/sessions/stream-stop/stop")).status_code == 200
        end = await tab.next_event("stream.end")
        assert end["message"]["stopped"] is True and end["message"]["content"] == "w0"
        gate.set()  # the model may go on: the component must not pass more to the bridge
        async with asyncio.timeout(WAIT):
            result = await streaming
    assert result.text == "w0"
    assert "Stopped in the chat after" in str(stream.status)
    assert "<done>" not in produced  # the model's stream was closed, not drained
    assert history(shared_bridge, "stream-stop")[-1]["content"] == "w0"
