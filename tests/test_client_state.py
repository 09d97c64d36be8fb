"""The tab's state and the ack protocol, the page config and launcher (no bridge needed)."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from bridge_cli.commands import _print_event
from streamlit_client.config import ChatConfig
from streamlit_client.launcher import PAGE, chat_command, chat_env
from streamlit_client.models import Listened, Message, Template
from streamlit_client.state import ChatState
from streamlit_client.subscription import Subscription


def msg(seq: int, role: str = "ai", content: str | None = None, id: str = "") -> Message:
    """A message as the bridge would send it (fields left out get empty values)."""
    fields = {"seq": seq, "role": role, "content": content or f"m{seq}", "session_id": "s"}
    return Message.from_dict({**fields, "id": id or f"id-{seq}"})


def raw(seq: int, role: str = "ai", **extra: object) -> dict[str, object]:
    return {**msg(seq, role).to_dict(), **extra}


def loaded(*seqs: int) -> ChatState:
    state = ChatState("s")
    state.load(msg(s) for s in seqs)
    return state


def test_have_is_the_gap_free_frontier() -> None:
    state = loaded(1, 2, 3)
    assert state.have == 3
    state.add(msg(5))  # e.g. this tab's own POST answered before seq 4 was pushed
    assert state.have == 3
    state.add(msg(4))
    assert state.have == 5


def test_history_loaded_with_a_limit_starts_at_its_first_seq() -> None:
    state = loaded(41, 42)
    assert (state.base, state.have) == (40, 42)
    assert not state.add(msg(7))


def test_a_push_merges_messages_once_and_records_the_nonce() -> None:
    state = loaded(1)
    push = state.apply_push({"nonce": 1, "messages": [raw(2), raw(3, "user")]})
    assert [m.seq for m in push.new] == [2, 3]
    assert (state.have, state.ack_nonce) == (3, 1)
    again = state.apply_push({"nonce": 2, "messages": [raw(2), raw(3), raw(4)]})
    assert [m.seq for m in again.new] == [4]
    assert state.apply_push({"nonce": 2, "messages": [raw(9)]}).new == ()


def test_only_pushed_non_streamed_ai_messages_are_typed_and_only_once() -> None:
    state = loaded(1)
    state.apply_push({"nonce": 1, "messages": [raw(2), raw(3, "user"), raw(4, streamed=True)]})
    assert state.take_fresh() == {2}
    assert state.take_fresh() == set()
    assert state.streamed == {4}


def test_a_full_run_leaves_messages_to_type_in_the_live_part() -> None:
    state = loaded(1)
    state.apply_push({"nonce": 1, "messages": [raw(2), raw(3, "user")]})
    state.start_full_run()
    assert [m.seq for m in state.live()] == [2, 3]
    state.take_fresh()
    state.start_full_run()
    assert state.live() == []


def test_a_full_run_is_wanted_for_many_live_messages_but_not_while_typing() -> None:
    state = loaded(1)
    state.apply_push({"nonce": 1, "messages": [raw(s) for s in range(2, 6)]})
    state.start_full_run()  # all four are still to be typed: they stay live
    assert len(state.live()) == 4 and not state.wants_full_run(3)
    state.take_fresh()
    assert state.wants_full_run(3) and not state.wants_full_run(4)


def test_live_and_history_split_at_the_last_full_run() -> None:
    state = loaded(1, 2)
    state.apply_push({"nonce": 1, "messages": [raw(3), raw(4)]})
    assert [m.seq for m in state.history()] == [1, 2]
    assert [m.seq for m in state.live()] == [3, 4]
    state.take_fresh()  # the live part drew (typed) them
    state.start_full_run()
    assert [m.seq for m in state.history()] == [1, 2, 3, 4]
    assert state.live() == []


def test_a_template_change_asks_for_a_full_run() -> None:
    state = loaded(1)
    push = state.apply_push({"nonce": 1, "messages": [], "template": {"input_msg": "Ask"}})
    assert push.template_changed and state.needs_full_run
    assert state.template.input_msg == "Ask"
    same = state.apply_push({"nonce": 2, "template": Template(input_msg="Ask").to_dict()})
    assert not same.template_changed


def test_a_reset_replaces_the_history() -> None:
    state = loaded(1, 2, 3)
    push = state.apply_push({"nonce": 1, "resets": 1, "messages": [raw(1)]})
    assert push.reset and state.needs_full_run
    assert list(state.messages) == [1] and state.have == 1
    # The same reset count again changes nothing.
    assert not state.apply_push({"nonce": 2, "resets": 1, "messages": []}).reset


def test_the_welcome_follows_the_template_but_other_messages_do_not() -> None:
    # The bridge gives the welcome the id `welcome`; the page finds it by that id alone.
    state = ChatState("s", template=Template(welcome_msg="Hi"))
    state.load([msg(1, content="Hi", id="welcome"), msg(2, content="Hi")])
    assert state.welcome_seq == 1
    state.apply_push({"nonce": 1, "template": {"welcome_msg": "Hello"}})
    assert state.welcome_seq == 1
    other = ChatState("s", template=Template(welcome_msg="Hi"))
    other.load([msg(1, content="a real answer")])
    assert other.welcome_seq is None
    # The welcome's text without its id is an ordinary message.
    lookalike = ChatState("s", template=Template(welcome_msg="Hi"))
    lookalike.load([msg(1, content="Hi")])
    assert lookalike.welcome_seq is None
    # After a reset, the new history's welcome arrives pushed.
    push = state.apply_push({"nonce": 2, "resets": 1, "messages": [raw(1, id="welcome")]})
    assert push.reset and state.welcome_seq == 1


def test_a_stopped_reply_keeps_its_mark_through_a_push() -> None:
    state = loaded(1)
    stopped = {**raw(2), "content": "half a rep", "stopped": True}
    push = state.apply_push({"nonce": 1, "messages": [{**stopped, "streamed": True}, raw(3)]})
    assert [m.stopped for m in push.new] == [True, False]
    assert state.messages[2].to_dict()["stopped"] is True
    assert "stopped" not in state.messages[3].to_dict()


def test_run_events_pass_through_python_consumers_untouched(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`run.*` frames (and any kind a newer bridge adds) carry no seq: the subscription
    yields them as they are without moving its resume point, and `tail` prints nothing."""
    sub = Subscription("ws://127.0.0.1:1", "s", after=4)
    frames: list[dict[str, Any]] = [
        {"event": "run.start", "run_id": "ab", "reply_to": 4},
        {"event": "run.step", "run_id": "ab", "label": "Calling search…"},
        {"event": "run.end", "run_id": "ab", "outcome": "error", "reason": "down"},
        {"event": "something.new", "seq": 99},
    ]
    for frame in frames:
        assert list(sub._handle(frame)) == [frame]
    assert sub.last_seq == 4
    for frame in frames:
        _print_event(frame)
    assert capsys.readouterr() == ("", "")


def test_models_read_the_bridge_json() -> None:
    listened = Listened.from_dict({
        **raw(3, "user"), "history": [raw(1), raw(2, "user")],
    })
    assert listened.session_id == "s" and listened.message.seq == 3
    assert [m.seq for m in listened.history] == [1, 2]
    assert Template.from_dict({"ai_avatar": "", "write_speed": None}).ai_avatar is None


def test_config_comes_from_bridge_variables() -> None:
    config = ChatConfig.from_env({
        "BRIDGE_URL": "http://bridge:7881/", "BRIDGE_CHAT_HISTORY": "7",
        "BRIDGE_API_KEY": "k",
    })
    assert config.bridge_url == "http://bridge:7881"
    assert config.browser_url == "http://bridge:7881"
    assert (config.history_limit, config.api_key) == (7, "k")
    assert ChatConfig.from_env(config.to_env()) == ChatConfig(
        "http://bridge:7881", "http://bridge:7881", "k", 7,
    )


def test_the_launcher_runs_streamlit_headless_on_the_page() -> None:
    command = chat_command(5123, host="0.0.0.0")
    assert command[1:4] == ["-m", "streamlit", "run"] and command[4] == str(PAGE)
    flags = dict(zip(command[5::2], command[6::2], strict=True))
    assert flags["--server.port"] == "5123" and flags["--server.address"] == "0.0.0.0"
    assert flags["--server.headless"] == "true"
    assert flags["--browser.gatherUsageStats"] == "false"
    env = chat_env("http://b:1", browser_bridge_url="https://public", base={"PATH": "/bin"})
    assert env == {
        "PATH": "/bin", "BRIDGE_URL": "http://b:1", "BRIDGE_BROWSER_URL": "https://public",
        "BRIDGE_CHAT_HISTORY": "50",
    }


def test_the_client_modules_never_import_streamlit() -> None:
    code = (
        "import sys, streamlit_client, streamlit_client.client, streamlit_client.demo_bot,"
        " streamlit_client.launcher; assert 'streamlit' not in sys.modules, 'imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_exported_name_exists() -> None:
    import streamlit_client

    for name in streamlit_client.__all__:
        assert getattr(streamlit_client, name) is not None, name
    from streamlit_client import chat

    assert callable(chat)
