"""The test servers themselves, driven with httpx (no bridge): `lfx serve` of tests/flows
(tests/lfx_support.py) and the pydantic-ai AG-UI agent (tests/agui_agent.py).

They pin down what the bridge's runner reads: `POST /api/v2/workflows` with `mode: stream`,
`stream_protocol: agui` answers AG-UI events as SSE.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest

from tests.agui_agent import TOOL_NAME, RunningAgent, reply_for
from tests.flows.build_flows import FLOW_IDS, FLOWS_DIR, MODEL_SOURCE
from tests.lfx_support import LFX_GROUP, RunningLfx, StartLfx, iter_sse
from tests.support import wait_until

pytest_plugins = ["tests.lfx_support", "tests.agui_agent"]
pytestmark = [pytest.mark.langflow, LFX_GROUP]


def session() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


def types(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


def text_of(events: list[dict[str, Any]]) -> str:
    return "".join(e["delta"] for e in events if e["type"] == "TEXT_MESSAGE_CONTENT")


def test_flows_embed_the_component_source_and_fixed_ids() -> None:
    """The committed flows are what tests/flows/build_flows.py writes from components/."""
    source = MODEL_SOURCE.read_text(encoding="utf-8")
    assert {p.stem for p in FLOWS_DIR.glob("*.json")} == set(FLOW_IDS)
    for stem, flow_id in FLOW_IDS.items():
        flow = json.loads((FLOWS_DIR / f"{stem}.json").read_text(encoding="utf-8"))
        assert flow["id"] == flow_id
        model = next(n for n in flow["data"]["nodes"] if n["id"] == "ScriptedModel-m")
        assert model["data"]["node"]["template"]["code"]["value"] == source, (
            f"{stem}.json is stale: run .venv/bin/python -m tests.flows.build_flows"
        )


def test_lfx_serves_the_flows_under_their_fixed_ids(lfx_server: RunningLfx) -> None:
    assert lfx_server.flow_ids == FLOW_IDS
    health = httpx.get(f"{lfx_server.url}/health", timeout=10).json()
    assert health == {"status": "healthy", "flow_count": len(FLOW_IDS)}


def test_stream_chat_streams_the_reply_token_by_token(lfx_server: RunningLfx) -> None:
    sid = session()
    events = lfx_server.stream("stream_chat", "hello there world", sid)

    assert events[0]["type"] == "RUN_STARTED" and events[0]["threadId"] == sid
    assert events[-1] == {
        "type": "RUN_FINISHED",
        "threadId": sid,
        "runId": events[0]["runId"],
    }
    deltas = [e["delta"] for e in events if e["type"] == "TEXT_MESSAGE_CONTENT"]
    assert len([d for d in deltas if d]) == 5  # one per word
    assert "".join(deltas) == "You said: hello there world"
    # One assistant message (the user's own message is not echoed), opened and closed once.
    assert types(events).count("TEXT_MESSAGE_START") == 1
    assert types(events).count("TEXT_MESSAGE_END") == 1
    assert {e["messageId"] for e in events if "messageId" in e} == {events[1]["messageId"]}
    # Without expose_graph_state, no per-component STEP_*/STATE_* events.
    assert set(types(events)) == {
        "RUN_STARTED",
        "TEXT_MESSAGE_START",
        "TEXT_MESSAGE_CONTENT",
        "TEXT_MESSAGE_END",
        "RUN_FINISHED",
    }


def test_memory_chat_sees_the_sessions_earlier_messages(lfx_server: RunningLfx) -> None:
    first, other = session(), session()

    assert text_of(lfx_server.stream("memory_chat", "one", first)) == (
        "You said: one (I remember: nothing)"
    )
    assert text_of(lfx_server.stream("memory_chat", "two", first)) == (
        "You said: two (I remember: one)"
    )
    assert text_of(lfx_server.stream("memory_chat", "three", first)) == (
        "You said: three (I remember: one | two)"
    )
    assert text_of(lfx_server.stream("memory_chat", "alone", other)) == (
        "You said: alone (I remember: nothing)"
    )


def test_failing_ends_with_run_error(lfx_server: RunningLfx) -> None:
    events = lfx_server.stream("failing", "hi", session())

    assert events[0]["type"] == "RUN_STARTED"
    # lfx sends two: the component's own error event, then the run's failure.
    errors = [e for e in events if e["type"] == "RUN_ERROR"]
    assert errors[0]["message"] == "the model exploded"
    assert all("the model exploded" in e["message"] for e in errors)
    assert "RUN_FINISHED" not in types(events)
    assert "TEXT_MESSAGE_CONTENT" not in types(events)


def test_failing_midway_closes_the_partial_reply_then_errors(lfx_server: RunningLfx) -> None:
    events = lfx_server.stream("failing_midway", "one two three", session())

    assert text_of(events) == "You said: one "
    assert types(events)[-3:-2] == ["TEXT_MESSAGE_END"]
    assert types(events)[-2:] == ["RUN_ERROR", "RUN_ERROR"]
    assert events[-2]["message"] == "the model exploded"


def test_closing_the_stream_cancels_the_lfx_run(lfx_server: RunningLfx) -> None:
    sid = session()
    deltas = 0
    with httpx.stream(
        "POST",
        f"{lfx_server.url}/api/v2/workflows",
        json=lfx_server.run_body("slow_chat", "go slowly", sid),
        headers=lfx_server.headers,
        timeout=30,
    ) as response:
        for event in iter_sse(response.iter_lines()):
            deltas += event["type"] == "TEXT_MESSAGE_CONTENT"
            if deltas == 6:  # the 3 words, then 3 of the 200 slow tokens
                break

    def ended() -> list[dict[str, Any]]:
        return [e for e in lfx_server.trace() if e["session_id"] == sid and e["event"] != "start"]

    wait_until(lambda: bool(ended()), 10, "the model's record of how its reply ended")
    (end,) = ended()
    assert end["event"] == "cancelled"
    assert 6 <= end["sent"] < 100  # stopped soon after the close, long before its 203rd


@pytest.mark.slow
def test_a_killed_lfx_breaks_the_stream_then_comes_back(start_lfx: StartLfx) -> None:
    lfx = start_lfx(token_delay=0.05)
    with (
        httpx.stream(
            "POST",
            f"{lfx.url}/api/v2/workflows",
            json=lfx.run_body("slow_chat", "go", session()),
            headers=lfx.headers,
            timeout=30,
        ) as response,
        pytest.raises(httpx.RemoteProtocolError),
    ):
        deltas = 0
        for event in iter_sse(response.iter_lines()):
            deltas += event["type"] == "TEXT_MESSAGE_CONTENT"
            if deltas == 3:
                lfx.kill()

    with pytest.raises(httpx.ConnectError):
        lfx.stream("stream_chat", "anyone?", session())

    url = lfx.url
    lfx.restart()  # on the same port, though the killed server's connections linger there
    assert lfx.url == url
    assert text_of(lfx.stream("stream_chat", "back again", session())) == "You said: back again"


def agui_input(messages: list[dict[str, str]]) -> dict[str, Any]:
    return {
        "threadId": "thread-1",
        "runId": f"run-{uuid.uuid4().hex[:8]}",
        "state": {},
        "messages": [{"id": f"m{i}", **m} for i, m in enumerate(messages)],
        "tools": [],
        "context": [],
        "forwardedProps": {},
    }


def agui_run(agent: RunningAgent, body: dict[str, Any]) -> list[dict[str, Any]]:
    with httpx.stream("POST", agent.url, json=body, timeout=30) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        return list(iter_sse(response.iter_lines()))


def test_agui_agent_streams_a_reply_naming_the_history(agui_agent: RunningAgent) -> None:
    body = agui_input(
        [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "how many?"},
        ]
    )
    events = agui_run(agui_agent, body)

    assert events[0]["type"] == "RUN_STARTED"
    assert (events[0]["threadId"], events[0]["runId"]) == ("thread-1", body["runId"])
    assert events[-1]["type"] == "RUN_FINISHED"
    start = next(e for e in events if e["type"] == "TOOL_CALL_START")
    assert start["toolCallName"] == TOOL_NAME
    result = next(e for e in events if e["type"] == "TOOL_CALL_RESULT")
    assert result["toolCallId"] == start["toolCallId"]
    assert result["content"] == "3 messages (user, assistant, user)"
    expected = reply_for(["user", "assistant", "user"], "how many?")
    assert text_of(events) == expected
    assert types(events).count("TEXT_MESSAGE_CONTENT") == len(expected.split(" "))


def test_agui_agent_reports_a_failure_as_run_error(agui_agent: RunningAgent) -> None:
    events = agui_run(agui_agent, agui_input([{"role": "user", "content": "explode please"}]))

    assert types(events) == ["RUN_STARTED", "RUN_ERROR"]
    assert events[-1]["message"] == "the agent exploded"
