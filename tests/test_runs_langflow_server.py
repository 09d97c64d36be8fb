"""Runs against the real Langflow 1.13 server (not only `lfx serve`, tests/test_runs_langflow.py).

The flows of tests/flows/ (Chat Input -> a scripted offline chat model that streams -> Chat
Output, its source embedded as a saved flow embeds a custom component's) are created in the
session's `langflow run` through its REST API, as an API client would import them. A bridge in
this process runs them for each user message (`POST /api/v2/workflows`, the API key of the
editor's Settings > Langflow API Keys) and the tests watch its WebSocket.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import StartApp
from tests.langflow_support.server import LANGFLOW_TEST_TIMEOUT, RunningLangflow
from tests.runs_support import RUN_WAIT, history, of, runner_env, say, until_run_end
from tests.support import wait_until
from tests.wsclient import recv, recv_until, ws_connect

pytest_plugins = ["tests.langflow_support.fixtures"]
pytestmark = [pytest.mark.langflow, pytest.mark.slow, pytest.mark.timeout(LANGFLOW_TEST_TIMEOUT)]

FLOWS_DIR = Path(__file__).parent / "flows"


# ------------------------------------------------------------------------------ helpers


@pytest.fixture(scope="module")
def flows(langflow: RunningLangflow) -> Iterator[dict[str, str]]:
    """tests/flows/<stem>.json created in the Langflow server: stem -> the server's flow id."""
    created: dict[str, str] = {}
    for stem in ("stream_chat", "memory_chat", "slow_chat"):
        saved = json.loads((FLOWS_DIR / f"{stem}.json").read_text(encoding="utf-8"))
        body = {
            "name": f"{stem} {uuid.uuid4().hex[:6]}",
            "description": saved["description"],
            "data": saved["data"],
        }
        response = httpx.post(
            f"{langflow.url}/api/v1/flows/", json=body, headers=langflow.auth, timeout=30
        )
        assert response.status_code == 201, response.text
        created[stem] = str(response.json()["id"])
    yield created
    for flow_id in created.values():
        httpx.delete(f"{langflow.url}/api/v1/flows/{flow_id}", headers=langflow.auth, timeout=30)


def run_env(lf: RunningLangflow, flow_id: str, **extra: str) -> dict[str, str]:
    """A bridge that runs `flow_id` of the Langflow server for each user message."""
    return runner_env(lf.url, flow_id, lf.api_key, **extra)


def new_session(name: str) -> str:
    """A session id of its own: the flows' memory and Langflow's message store outlive a test
    (and a server reused through STREAMLIT_BRIDGE_LANGFLOW_DIR outlives the test session)."""
    return f"{name}-{uuid.uuid4().hex[:8]}"


def langflow_messages(lf: RunningLangflow, session: str) -> list[tuple[str, str]]:
    """(sender, text) of the messages Langflow stored under `session` (its own memory)."""
    response = httpx.get(
        f"{lf.url}/api/v1/monitor/messages",
        params={"session_id": session},
        headers=lf.auth,
        timeout=30,
    )
    response.raise_for_status()
    return [(m["sender"], m["text"]) for m in response.json()]


# ------------------------------------------------------------------------------ tests


async def test_reply_streams_in_tokens_and_is_stored_once(
    langflow: RunningLangflow, flows: dict[str, str], start_app: StartApp
) -> None:
    app = start_app(env=run_env(langflow, flows["stream_chat"]))
    session = new_session("lf-tokens")
    async with (
        httpx.AsyncClient(base_url=app.url, timeout=30) as http,
        ws_connect(app.ws_url, session) as ws,
    ):
        await recv(ws)
        seq = await say(http, session, "hello there, bridge")
        events = await until_run_end(ws)
        kinds = [e["event"] for e in events if e["event"] != "message"]
        assert kinds[0] == "run.start" and kinds[1] == "stream.start", kinds
        assert kinds[-2:] == ["stream.end", "run.end"], kinds
        start = of(events, "run.start")[0]
        assert start["reply_to"] == seq
        deltas = [e["delta"] for e in of(events, "stream.delta")]
        assert len(deltas) >= 2, deltas  # streamed, not one block
        reply = "You said: hello there, bridge"
        # The reply only: no echo of the user's own message in the stream.
        assert "".join(deltas) == reply
        end = of(events, "stream.end")[0]
        assert end["message"]["content"] == reply and end["message"]["role"] == "ai"
        assert of(events, "run.end")[0] == {
            "event": "run.end",
            "run_id": start["run_id"],
            "outcome": "done",
            "reason": "",
        }
        stored = await history(http, session)
        assert [(m["role"], m["content"]) for m in stored[1:]] == [
            ("user", "hello there, bridge"),
            ("ai", reply),
        ]
    # The run's session was the bridge's: Langflow stored the turn under it.
    assert langflow_messages(langflow, session) == [
        ("User", "hello there, bridge"),
        ("Machine", reply),
    ]


async def test_the_flow_memory_follows_the_bridge_session(
    langflow: RunningLangflow, flows: dict[str, str], start_app: StartApp
) -> None:
    app = start_app(env=run_env(langflow, flows["memory_chat"]))
    ada, other = new_session("lf-mem-a"), new_session("lf-mem-b")
    async with (
        httpx.AsyncClient(base_url=app.url, timeout=30) as http,
        ws_connect(app.ws_url, ada) as ws,
        ws_connect(app.ws_url, other) as ws_other,
    ):
        await recv(ws)
        await recv(ws_other)
        await say(http, ada, "my name is Ada")
        first = of(await until_run_end(ws), "stream.end")[0]["message"]["content"]
        assert first == "You said: my name is Ada (I remember: nothing)"
        await say(http, ada, "what is my name?")
        events = await until_run_end(ws)
        second = "".join(e["delta"] for e in of(events, "stream.delta"))
        assert second == "You said: what is my name? (I remember: my name is Ada)"
        assert of(events, "stream.end")[0]["message"]["content"] == second
        # Another session's flow memory is its own.
        await say(http, other, "hello")
        reply = of(await until_run_end(ws_other), "stream.end")[0]["message"]["content"]
        assert reply == "You said: hello (I remember: nothing)"
    # Langflow's message store keeps each conversation under the bridge session's id.
    assert langflow_messages(langflow, ada) == [
        ("User", "my name is Ada"),
        ("Machine", first),
        ("User", "what is my name?"),
        ("Machine", second),
    ]
    assert langflow_messages(langflow, other) == [("User", "hello"), ("Machine", reply)]


async def test_a_wrong_key_or_flow_gets_langflow_own_error_without_the_key(
    langflow: RunningLangflow, flows: dict[str, str], start_app: StartApp
) -> None:
    missing = "00000000-0000-0000-0000-000000000000"
    cases = [
        (
            {"BRIDGE_LANGFLOW_API_KEY": "not-the-key"},
            "answered 403: Invalid API key",
        ),
        (
            {"BRIDGE_FLOW": missing},
            f"answered 404: Flow '{missing}' does not exist.",
        ),
    ]
    for extra, expected in cases:
        app = start_app(env=run_env(langflow, flows["stream_chat"], **extra))
        session = new_session("lf-wrong")
        async with (
            httpx.AsyncClient(base_url=app.url, timeout=30) as http,
            ws_connect(app.ws_url, session) as ws,
        ):
            await recv(ws)
            await say(http, session, "hello?")
            events = await until_run_end(ws)
            end = of(events, "run.end")[0]
            assert end["outcome"] == "error", end
            assert end["reason"].startswith(
                f"The assistant is unavailable: Langflow at {langflow.url} {expected}"
            ), end
            assert "not-the-key" not in end["reason"]
            assert langflow.api_key not in end["reason"]
            assert not of(events, "stream.end")
            assert [m["role"] for m in (await history(http, session))[1:]] == ["user"]


async def test_stop_mid_reply_keeps_the_partial_and_langflow_cancels_its_run(
    langflow: RunningLangflow, flows: dict[str, str], start_app: StartApp
) -> None:
    app = start_app(env=run_env(langflow, flows["slow_chat"]))
    session = new_session("lf-halt")
    log_from = langflow.log_offset()
    async with (
        httpx.AsyncClient(base_url=app.url, timeout=30) as http,
        ws_connect(app.ws_url, session) as ws,
    ):
        await recv(ws)
        await say(http, session, "count for me")
        text = ""
        while " 3" not in text:  # some of the counting has streamed
            events = await recv_until(ws, lambda e: e["event"] == "stream.delta", RUN_WAIT)
            text += "".join(e["delta"] for e in of(events, "stream.delta"))
        await ws.send(json.dumps({"event": "stop"}))
        events = await until_run_end(ws)
        end = of(events, "stream.end")[0]["message"]
        assert end["stopped"] is True
        assert end["content"].startswith("You said: count for me 1 2 3"), end
        assert not end["content"].endswith(" 200")
        assert of(events, "run.end")[0]["outcome"] == "stopped"
        assert (await history(http, session))[-1] == end

    # The bridge closed its request; Langflow cancelled the run's job.
    def cancelled() -> bool:
        with langflow.log_file.open("rb") as log:
            log.seek(log_from)
            return b"was cancelled by system" in log.read()

    wait_until(cancelled, 30, "Langflow to log the run's job as cancelled")
