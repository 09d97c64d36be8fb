"""`bridge.runs`: SSE framing, what AG-UI events mean, error bodies, the run settings."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import pytest

from bridge.errors import InvalidInput
from bridge.runs.agui import Progress, RunFailed, Step
from bridge.runs.sources import AguiAgent, LangflowFlow, error_text, source_for
from bridge.runs.sse import EventTooLarge, sse_data
from bridge.settings import Settings

FLOW = "6f1d0c2e-0000-4000-8000-000000000001"


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def _data(*parts: bytes, limit: int = 1000) -> list[str]:
    return [d async for d in sse_data(_chunks(*parts), limit)]


async def test_sse_events_split_anywhere_and_other_fields_skipped() -> None:
    stream = b'id: 0\ndata: {"a": 1}\n\n: a comment\r\nevent: x\r\ndata: two\r\ndata: lines\r\n\r\n'
    whole = await _data(stream)
    assert whole == ['{"a": 1}', "two\nlines"]
    # Every split of the same bytes gives the same events (a chunk may end anywhere,
    # even between CR and LF).
    for cut in range(1, len(stream)):
        assert await _data(stream[:cut], stream[cut:]) == whole, cut


async def test_sse_last_event_without_blank_line_is_kept() -> None:
    assert await _data(b"data: end") == ["end"]
    assert await _data(b"data: a\n\ndata: b\n") == ["a", "b"]


async def test_sse_bounds_a_line_and_an_event() -> None:
    with pytest.raises(EventTooLarge):
        await _data(b"data: " + b"x" * 200, limit=100)  # a line that never ends
    with pytest.raises(EventTooLarge):
        await _data(b"data: " + b"x" * 60 + b"\ndata: " + b"y" * 60 + b"\n", limit=100)
    assert len((await _data(b"data: " + b"x" * 90 + b"\n\n", limit=100))[0]) == 90


def _feed(progress: Progress, *events: str) -> list[str | Step | None]:
    return [progress.feed(e) for e in events]


def test_reply_text_steps_and_end() -> None:
    progress = Progress("the flow")
    got = _feed(
        progress,
        '{"type": "RUN_STARTED", "threadId": "t", "runId": "r"}',
        '{"type": "STEP_STARTED", "stepName": "Chat Model"}',
        '{"type": "TEXT_MESSAGE_START", "messageId": "m1", "role": "assistant"}',
        '{"type": "TEXT_MESSAGE_CONTENT", "messageId": "m1", "delta": "Hel"}',
        '{"type": "TEXT_MESSAGE_CONTENT", "messageId": "m1", "delta": "lo"}',
        '{"type": "TOOL_CALL_START", "toolCallId": "c", "toolCallName": "search"}',
        '{"type": "TOOL_CALL_END", "toolCallId": "c"}',
        '{"type": "TEXT_MESSAGE_END", "messageId": "m1"}',
        '{"type": "TEXT_MESSAGE_START", "messageId": "m2", "role": "assistant"}',
        '{"type": "TEXT_MESSAGE_CONTENT", "messageId": "m2", "delta": "again"}',
        '{"type": "STEP_FINISHED", "stepName": "Chat Model"}',
        '{"type": "STATE_SNAPSHOT", "snapshot": {}}',
    )
    assert not progress.finished
    assert got == [
        None,
        Step("Running Chat Model…"),
        None,
        "Hel",
        "lo",
        Step("Calling search…"),
        Step(""),
        None,
        None,
        "\n\nagain",  # a second message of the reply, kept apart
        Step(""),
        None,
    ]
    assert progress.feed('{"type": "RUN_FINISHED", "threadId": "t", "runId": "r"}') is None
    assert progress.finished


def test_text_of_other_roles_is_not_the_reply() -> None:
    progress = Progress("the flow")
    got = _feed(
        progress,
        '{"type": "TEXT_MESSAGE_START", "messageId": "u", "role": "user"}',
        '{"type": "TEXT_MESSAGE_CONTENT", "messageId": "u", "delta": "my question"}',
        '{"type": "TEXT_MESSAGE_CHUNK", "messageId": "a", "delta": "answer"}',
    )
    assert got == [None, None, "answer"]


def test_run_error_and_garbage_fail_in_plain_words() -> None:
    with pytest.raises(RunFailed, match=r"^The flow failed: the model exploded$"):
        Progress("the flow").feed('{"type": "RUN_ERROR", "message": " the model exploded "}')
    with pytest.raises(RunFailed, match=r"^The agent failed without saying why$"):
        Progress("the agent").feed('{"type": "RUN_ERROR"}')
    for garbage in ("not json", "[1, 2]", '{"no": "type"}', '{"type": 3}'):
        with pytest.raises(RunFailed, match="not an AG-UI event"):
            Progress("the flow").feed(garbage)


def test_step_names_are_tidied_and_bounded() -> None:
    progress = Progress("the flow")
    long = "x" * 500
    step = progress.feed('{"type": "TOOL_CALL_START", "toolCallName": "' + long + '"}')
    assert isinstance(step, Step) and len(step.label) < 100
    assert progress.feed('{"type": "STEP_STARTED", "stepName": "  a\\n  b "}') == Step(
        "Running a b…"
    )
    assert progress.feed('{"type": "TOOL_CALL_START"}') == Step("Calling a tool…")


def test_error_text_reads_the_usual_error_bodies() -> None:
    assert error_text(b'{"detail": "Invalid API key"}') == "Invalid API key"
    assert (
        error_text(b'{"detail": {"error": "x", "message": "Flow not found"}}') == "Flow not found"
    )
    validation = b'{"detail": [{"loc": ["body"], "msg": "Invalid flow_id, must be a UUID"}]}'
    assert error_text(validation) == "Invalid flow_id, must be a UUID"
    assert error_text(b"Bad gateway\nmore") == "Bad gateway"
    assert error_text(b"") == ""


@pytest.mark.parametrize(
    ("env", "complaint"),
    [
        ({"BRIDGE_LANGFLOW_URL": "http://x"}, "needs --flow"),
        ({"BRIDGE_FLOW": "6f1d0c2e-0000-4000-8000-000000000001"}, "needs --langflow-url"),
        ({"BRIDGE_LANGFLOW_URL": "http://x", "BRIDGE_FLOW": "my-endpoint"}, "is not a flow id"),
        ({"BRIDGE_LANGFLOW_URL": "ftp://x", "BRIDGE_FLOW": FLOW}, "not an http"),
        (
            {
                "BRIDGE_AGENT_URL": "http://a",
                "BRIDGE_LANGFLOW_URL": "http://x",
                "BRIDGE_FLOW": FLOW,
            },
            "not both",
        ),
        ({"BRIDGE_AGENT_URL": "http://a", "BRIDGE_AGENT_HEADER": "no colon"}, "'Name: value'"),
        ({"BRIDGE_AGENT_URL": "http://a", "BRIDGE_RUNS_MAX": "0"}, "runs_max=0"),
        (
            {
                "BRIDGE_AGENT_URL": "http://a",
                "BRIDGE_RUNS_MAX": "50",
                "BRIDGE_LISTEN_WAITERS_MAX": "10",
            },
            "above listen_waiters_max",
        ),
    ],
)
def test_run_settings_are_checked(env: dict[str, str], complaint: str) -> None:
    with pytest.raises(InvalidInput, match=re.escape(complaint)):
        Settings.load(env)


def test_run_settings_pick_the_source_and_hide_secrets() -> None:
    settings = Settings.load(
        {
            "BRIDGE_LANGFLOW_URL": "http://lf:7860/",
            "BRIDGE_FLOW": FLOW,
            "BRIDGE_LANGFLOW_API_KEY": "sk-secret",
        }
    )
    assert settings.runs and "sk-secret" not in repr(settings)
    source = source_for(settings)
    assert isinstance(source, LangflowFlow) and "sk-secret" not in repr(source)
    agent = source_for(
        Settings.load(
            {
                "BRIDGE_AGENT_URL": "http://a/",
                "BRIDGE_AGENT_HEADER": "Authorization: Bearer t, X-A: b",
            }
        )
    )
    assert isinstance(agent, AguiAgent)
    assert agent.headers == {"Authorization": "Bearer t", "X-A": "b"} and "Bearer" not in repr(
        agent
    )
    assert source_for(Settings.load({})) is None
