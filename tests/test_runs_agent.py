"""Runs against a real AG-UI agent (`--agent-url`): Pydantic AI's AG-UI server with a
scripted model (tests/agui_agent.py). The agent is given the session's messages, calls a
tool (shown as a step), and streams a reply naming what it was given."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.agui_agent import RunningAgent, StartAgent, reply_for
from tests.conftest import StartApp
from tests.wsclient import recv, recv_until, ws_connect

pytest_plugins = ["tests.agui_agent"]
pytestmark = pytest.mark.slow

AGENT_GROUP = pytest.mark.xdist_group("agui-agent")


def agent_env(agent: RunningAgent, **extra: str) -> dict[str, str]:
    return {"BRIDGE_AGENT_URL": agent.url, **extra}


async def turn(http: httpx.AsyncClient, ws: Any, session: str, text: str) -> list[dict[str, Any]]:
    posted = await http.post(
        f"/api/v1/sessions/{session}/messages", json={"role": "user", "content": text}
    )
    assert posted.status_code == 200, posted.text
    return await recv_until(ws, lambda e: e["event"] == "run.end", 30)


@AGENT_GROUP
async def test_the_agent_gets_the_conversation_and_its_reply_streams(
    agui_agent: RunningAgent, start_app: StartApp
) -> None:
    app = start_app(env=agent_env(agui_agent, BRIDGE_AGENT_HEADER="X-Test: yes"))
    async with (
        httpx.AsyncClient(base_url=app.url, timeout=30) as http,
        ws_connect(app.ws_url, "agent-1") as ws,
    ):
        await recv(ws)
        first = await turn(http, ws, "agent-1", "hello agent")
        # welcome (assistant) + this message
        expected = reply_for(["assistant", "user"], "hello agent")
        assert [e["outcome"] for e in first if e["event"] == "run.end"] == ["done"]
        steps = [e["label"] for e in first if e["event"] == "run.step"]
        assert "Calling count_messages…" in steps and steps[-1] == ""
        deltas = [e["delta"] for e in first if e["event"] == "stream.delta"]
        assert "".join(deltas) == expected and len(deltas) >= 2
        second = await turn(http, ws, "agent-1", "and again")
        end = next(e for e in second if e["event"] == "stream.end")
        assert end["message"]["content"] == reply_for(
            ["assistant", "user", "assistant", "user"], "and again"
        )


@AGENT_GROUP
async def test_an_agent_error_is_shown_and_the_next_message_runs(
    agui_agent: RunningAgent, start_app: StartApp
) -> None:
    app = start_app(env=agent_env(agui_agent))
    async with (
        httpx.AsyncClient(base_url=app.url, timeout=30) as http,
        ws_connect(app.ws_url, "agent-err") as ws,
    ):
        await recv(ws)
        failed = await turn(http, ws, "agent-err", "explode now")
        end = next(e for e in failed if e["event"] == "run.end")
        assert end["outcome"] == "error" and "the agent exploded" in end["reason"], end
        assert end["reason"].startswith("The agent failed")
        fine = await turn(http, ws, "agent-err", "calm now")
        assert next(e for e in fine if e["event"] == "run.end")["outcome"] == "done"
        stored = (await http.get("/api/v1/sessions/agent-err/messages")).json()
        assert [m["role"] for m in stored] == ["ai", "user", "user", "ai"]


async def test_stop_ends_the_agent_run(start_agui_agent: StartAgent, start_app: StartApp) -> None:
    agent = start_agui_agent(token_delay=0.2)
    app = start_app(env=agent_env(agent))
    async with (
        httpx.AsyncClient(base_url=app.url, timeout=30) as http,
        ws_connect(app.ws_url, "agent-stop") as ws,
    ):
        await recv(ws)
        await http.post(
            "/api/v1/sessions/agent-stop/messages", json={"role": "user", "content": "slowly"}
        )
        await recv_until(ws, lambda e: e["event"] == "stream.delta" and e["delta"].strip(), 30)
        await http.post("/api/v1/sessions/agent-stop/stop")
        events = await recv_until(ws, lambda e: e["event"] == "run.end", 30)
        end = next(e for e in events if e["event"] == "stream.end")
        assert end["message"]["stopped"] is True
        assert reply_for(["assistant", "user"], "slowly").startswith(end["message"]["content"])
        assert events[-1]["outcome"] == "stopped"
