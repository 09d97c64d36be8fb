"""`streamlit_client.client` and `.subscription` against a real bridge."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from streamlit_client.client import BridgeClient, BridgeHTTPError, session_path, ws_base
from streamlit_client.models import Template
from streamlit_client.subscription import Subscription
from tests.support import RunningBridge, wait_until

StartBridge = Callable[..., RunningBridge]


@pytest.fixture
def api(bridge: RunningBridge) -> Iterator[BridgeClient]:
    with BridgeClient(bridge.url) as client:
        yield client


@pytest.fixture
def sid() -> str:
    return f"c-{uuid.uuid4().hex[:10]}"


class Collector:
    """Iterates a subscription in a thread, keeping every event (and how it ended)."""

    def __init__(self, subscription: Subscription) -> None:
        self.subscription = subscription
        self.events: list[dict[str, Any]] = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for event in self.subscription:
                self.events.append(event)
        except BaseException as exc:
            self.error = exc

    def kinds(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == kind]

    def seqs(self) -> list[int]:
        return [e["seq"] for e in self.events if e.get("event") in ("message", "stream.end")]

    def wait_for(self, predicate: Callable[[], bool], what: str) -> None:
        wait_until(predicate, 10, what)

    def close(self) -> None:
        self.subscription.close()
        self.thread.join(5)


def test_helpers_encode_ids_and_schemes() -> None:
    assert session_path("a/b?c") == "/api/v1/sessions/a%2Fb%3Fc"
    assert ws_base("https://h:1/") == "wss://h:1"
    assert ws_base("http://h") == "ws://h"


def test_sessions_messages_and_counters(api: BridgeClient, sid: str) -> None:
    created = api.create_session(sid)
    assert [(m.seq, m.role) for m in created] == [(1, "ai")]
    posted = api.post_message(sid, "user", "hello", id="m-1")
    again = api.post_message(sid, "user", "hello", id="m-1")
    assert posted == again and posted.seq == 2 and posted.session_id == sid
    assert [m.content for m in api.messages(sid)][1:] == ["hello"]
    assert [m.seq for m in api.messages(sid, limit=1)] == [2]
    info = api.session_info(sid)
    assert (info["last_seq"], info["message_count"]) == (2, 2)


def test_bad_input_raises_with_the_bridges_reason(api: BridgeClient) -> None:
    with pytest.raises(BridgeHTTPError) as caught:
        api.post_message("not a valid id", "ai", "x")
    assert 400 <= caught.value.status < 500 and caught.value.detail


def test_template_round_trip(api: BridgeClient) -> None:
    changed = api.set_template(input_msg="Ask me", ai_avatar="🦜")
    assert api.template() == changed
    assert (changed.input_msg, changed.ai_avatar) == ("Ask me", "🦜")
    assert api.set_template(Template()) == Template()


def test_listen_hands_out_user_messages_with_history(api: BridgeClient, sid: str) -> None:
    assert api.listen(timeout=0.2) is None
    api.post_message(sid, "ai", "an answer")
    api.post_message(sid, "user", "a question")
    listened = api.listen(timeout=5)
    assert listened is not None and listened.session_id == sid
    assert listened.message.content == "a question"
    assert [m.content for m in listened.history][-1:] == ["an answer"]
    api.post_message(sid, "user", "only here")
    heard = api.listen(timeout=5, session_id=sid)
    assert heard is not None and heard.message.content == "only here"


def test_subscription_replays_history_then_pushes_live_once(api: BridgeClient, sid: str) -> None:
    api.create_session(sid)
    api.post_message(sid, "ai", "old")
    collector = Collector(api.subscribe(sid))
    try:
        collector.wait_for(lambda: collector.seqs() == [1, 2], "history replay")
        hello = collector.kinds("hello")[0]
        assert hello["session_id"] == sid and hello["last_seq"] == 2
        api.post_message(sid, "ai", "new")
        collector.wait_for(lambda: collector.seqs() == [1, 2, 3], "live message")
    finally:
        collector.close()


def test_subscription_follows_a_stream(api: BridgeClient, sid: str) -> None:
    api.create_session(sid)
    collector = Collector(api.subscribe(sid, after=1))
    try:
        collector.wait_for(lambda: bool(collector.kinds("hello")), "hello")
        stored = api.stream_reply(sid, iter(["Hel", "lo ", "wörld"]))
        assert (stored.content, stored.role, stored.seq) == ("Hello wörld", "ai", 2)
        collector.wait_for(lambda: bool(collector.kinds("stream.end")), "stream end")
        deltas = "".join(e["delta"] for e in collector.kinds("stream.delta"))
        assert deltas == "Hello wörld"
        assert collector.kinds("stream.end")[0]["message"]["content"] == "Hello wörld"
    finally:
        collector.close()


def test_subscription_resumes_after_a_restart_without_loss_or_repeats(
    start_bridge: StartBridge, sid: str,
) -> None:
    bridge = start_bridge(store="sqlite")
    with BridgeClient(bridge.url) as api:
        api.create_session(sid)
        collector = Collector(api.subscribe(sid))
        try:
            api.post_message(sid, "ai", "one")
            collector.wait_for(lambda: collector.seqs() == [1, 2], "first messages")
            bridge.restart()
            api.post_message(sid, "ai", "while reconnecting")
            api.post_message(sid, "ai", "after")
            collector.wait_for(lambda: collector.seqs() == [1, 2, 3, 4], "resumed messages")
            assert len(collector.kinds("hello")) >= 2
        finally:
            collector.close()


def test_subscription_reloads_everything_when_the_epoch_changes(
    start_bridge: StartBridge, sid: str,
) -> None:
    bridge = start_bridge()  # memory: a restart loses the history
    with BridgeClient(bridge.url) as api:
        api.create_session(sid)
        api.post_message(sid, "ai", "lost")
        collector = Collector(api.subscribe(sid))
        try:
            collector.wait_for(lambda: collector.seqs() == [1, 2], "first messages")
            bridge.restart()
            api.post_message(sid, "ai", "new history")

            def replayed() -> bool:
                kinds = [e.get("event") for e in collector.events]
                if "reset" not in kinds:
                    return False
                after = collector.events[kinds.index("reset"):]
                return any(e.get("message", {}).get("content") == "new history" for e in after)

            collector.wait_for(replayed, "a reset, then the new history")
        finally:
            collector.close()


def test_a_deleted_session_yields_reset_then_starts_again(api: BridgeClient, sid: str) -> None:
    # protocol.md: a deletion sends `reset` and keeps the socket open (4004 is reserved).
    api.create_session(sid)
    collector = Collector(api.subscribe(sid))
    try:
        collector.wait_for(lambda: collector.seqs() == [1], "history")
        api.delete_session(sid)
        collector.wait_for(lambda: bool(collector.kinds("reset")), "reset")
        api.post_message(sid, "ai", "a new life")
        collector.wait_for(
            lambda: collector.seqs() == [1, 1, 2] or collector.error is not None,
            "the new history on the same subscription",
        )
        assert collector.error is None, f"the subscription ended: {collector.error!r}"
        assert collector.thread.is_alive()
        stored = [e for e in collector.events if e.get("event") in ("message", "reset")]
        assert [e.get("seq") for e in stored] == [1, None, 1, 2]  # reset, then the new life
        assert stored[-1]["message"]["content"] == "a new life"
    finally:
        collector.close()
