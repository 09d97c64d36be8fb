"""Runs against a real `lfx serve`: the bridge runs a flow for every user message and
streams its reply into the session (issue 14; docs/protocol.md section 7).

The flows are in tests/flows/ (a scripted chat model that streams offline); their model
writes a trace of each reply (start, then finished / cancelled / closed / failed)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection

from tests.conftest import StartApp, StartBridge
from tests.lfx_support import LFX_GROUP, RunningLfx, StartLfx
from tests.redis_support import new_prefix, store_url, wipe
from tests.runs_support import (
    Event,
    history,
    of,
    runner_env,
    say,
    until_run_end,
    wait_for_reply,
)
from tests.support import wait_until
from tests.wsclient import recv, recv_until, ws_connect

pytest_plugins = ["tests.lfx_support"]
pytestmark = [pytest.mark.langflow, pytest.mark.slow]


def run_env(lfx: RunningLfx, flow: str, **extra: str) -> dict[str, str]:
    """A bridge that runs `flow` of `lfx` for each user message."""
    return runner_env(lfx.url, lfx.flow_ids[flow], lfx.api_key, **extra)


@LFX_GROUP
async def test_reply_streams_in_order_and_is_stored_once(
    lfx_server: RunningLfx, start_app: StartApp
) -> None:
    app = start_app(env=run_env(lfx_server, "stream_chat"))
    async with (
        httpx.AsyncClient(base_url=app.url, timeout=30) as http,
        ws_connect(app.ws_url, "tokens") as ws,
        ws_connect(app.ws_url, "tokens") as second_tab,
    ):
        await recv(ws)
        await recv(second_tab)
        seq = await say(http, "tokens", "hello there, bridge")
        events = await until_run_end(ws)
        kinds = [e["event"] for e in events if e["event"] != "message"]
        # run.start before the reply's stream, run.end after it is stored.
        assert kinds[0] == "run.start" and kinds[1] == "stream.start", kinds
        assert kinds[-2:] == ["stream.end", "run.end"], kinds
        start = of(events, "run.start")[0]
        assert start["reply_to"] == seq
        assert of(events, "stream.start")[0]["run_id"] == start["run_id"]
        deltas = [e["delta"] for e in of(events, "stream.delta")]
        assert len(deltas) >= 2  # streamed, not one block
        reply = "You said: hello there, bridge"
        assert "".join(deltas) == reply
        end = of(events, "stream.end")[0]
        assert end["message"]["content"] == reply and end["message"]["role"] == "ai"
        assert of(events, "run.end")[0] == {
            "event": "run.end",
            "run_id": start["run_id"],
            "outcome": "done",
            "reason": "",
        }
        # The other tab saw the same run.
        other = await until_run_end(second_tab)
        assert of(other, "stream.end")[0]["message"] == end["message"]
        stored = await history(http, "tokens")
        assert [(m["role"], m["content"]) for m in stored[1:]] == [
            ("user", "hello there, bridge"),
            ("ai", reply),
        ]
        metrics = (await http.get("/metrics")).text
        assert 'bridge_runs_total{outcome="done"} 1.0' in metrics
        assert "bridge_runs_active 0.0" in metrics
        # Listen is off while the bridge answers by itself (it would steal messages).
        listen = await http.get("/api/v1/listen/message", params={"timeout": 0})
        assert listen.status_code == 409 and "answers user messages itself" in listen.text


@LFX_GROUP
async def test_the_flow_memory_follows_the_session(
    lfx_server: RunningLfx, start_app: StartApp
) -> None:
    app = start_app(env=run_env(lfx_server, "memory_chat"))
    async with (
        httpx.AsyncClient(base_url=app.url, timeout=30) as http,
        ws_connect(app.ws_url, "mem-a") as ws,
    ):
        await recv(ws)
        await say(http, "mem-a", "my name is Ada")
        await until_run_end(ws)
        await say(http, "mem-a", "what is my name?")
        second = of(await until_run_end(ws), "stream.end")[0]["message"]["content"]
        assert "my name is Ada" in second, second
        # Another session's flow memory is its own.
        await say(http, "mem-b", "hello")
        await wait_for_reply(http, app.ws_url, "mem-b", 1)
        other = (await history(http, "mem-b"))[-1]["content"]
        assert "Ada" not in other, other


@LFX_GROUP
@pytest.mark.parametrize(("flow", "words"), [("failing", ""), ("failing_midway", "You said: boom")])
async def test_a_failing_flow_is_reported_and_nothing_is_stored(
    lfx_server: RunningLfx, start_app: StartApp, flow: str, words: str
) -> None:
    app = start_app(env=run_env(lfx_server, flow))
    async with (
        httpx.AsyncClient(base_url=app.url, timeout=30) as http,
        ws_connect(app.ws_url, "fails") as ws,
    ):
        await recv(ws)
        await say(http, "fails", "boom please")
        events = await until_run_end(ws)
        end = of(events, "run.end")[0]
        assert end["outcome"] == "error"
        assert "the model exploded" in end["reason"], end
        assert end["reason"].startswith("The flow failed"), end
        assert of(events, "stream.abort"), events  # a half-written reply is withdrawn
        assert not of(events, "stream.end")
        text = "".join(e["delta"] for e in of(events, "stream.delta"))
        assert words.startswith(text) and (text or not words)  # what came before the failure
        stored = await history(http, "fails")
        assert [m["role"] for m in stored[1:]] == ["user"]  # the question stays, no reply
        # The failed message is settled: the next one runs (and fails the same way),
        # and the first is not run again.
        await say(http, "fails", "second")
        again = of(await until_run_end(ws), "run.start")[0]
        assert again["reply_to"] == stored[-1]["seq"] + 1


@LFX_GROUP
async def test_sessions_run_at_once_and_each_in_order(
    lfx_server: RunningLfx, start_app: StartApp
) -> None:
    """Two sessions' runs overlap; one session's second message waits for its first."""
    app = start_app(env=run_env(lfx_server, "slow_chat"))
    seen: list[tuple[float, str, Event]] = []
    changed = asyncio.Condition()  # notified at each run event the watchers record

    async def watch(ws: ClientConnection, session: str, runs: int) -> None:
        ends = 0
        while ends < runs:
            event = await recv(ws, 30)
            if event["event"].startswith("run."):
                async with changed:
                    seen.append((time.monotonic(), session, event))
                    changed.notify_all()
                ends += event["event"] == "run.end"

    async def until_seen(predicate: Callable[[], bool]) -> None:
        async with asyncio.timeout(20), changed:
            await changed.wait_for(predicate)

    async with (
        httpx.AsyncClient(base_url=app.url, timeout=30) as http,
        ws_connect(app.ws_url, "order-a") as wa,
        ws_connect(app.ws_url, "order-b") as wb,
    ):
        await recv(wa)
        await recv(wb)
        watching = [asyncio.create_task(watch(wa, "a", 2)), asyncio.create_task(watch(wb, "b", 1))]
        a1 = await say(http, "order-a", "first of a")
        a2 = await say(http, "order-a", "second of a")
        b1 = await say(http, "order-b", "only b")

        def starts() -> set[tuple[str, int]]:
            return {(s, e["reply_to"]) for _, s, e in seen if e["event"] == "run.start"}

        # Both sessions run (slow_chat takes about 10 s a reply) while a's second waits.
        await until_seen(lambda: len(starts()) >= 2)
        assert starts() == {("a", a1), ("b", b1)}
        await http.post("/api/v1/sessions/order-a/stop")
        await until_seen(lambda: ("a", a2) in starts())
        await http.post("/api/v1/sessions/order-a/stop")
        await http.post("/api/v1/sessions/order-b/stop")
        await asyncio.wait_for(asyncio.gather(*watching), 30)
    order = [(s, e["event"], e.get("reply_to")) for _, s, e in seen]
    a_events = [(kind, to) for s, kind, to in order if s == "a"]
    assert a_events == [("run.start", a1), ("run.end", None), ("run.start", a2), ("run.end", None)]
    assert all(e["outcome"] == "stopped" for _, _, e in seen if e["event"] == "run.end")
    first_b_start = next(i for i, (s, k, _) in enumerate(order) if s == "b" and k == "run.start")
    first_a_end = next(i for i, (s, k, _) in enumerate(order) if s == "a" and k == "run.end")
    assert first_b_start < first_a_end  # b did not wait for a


def reply_records(lfx: RunningLfx, session: str) -> list[dict[str, Any]]:
    """The flow model's trace records of the session's replies."""
    return [r for r in lfx.trace() if r.get("session_id") == session]


@LFX_GROUP
async def test_stop_mid_reply_stores_the_partial_and_cancels_the_lfx_run(
    lfx_server: RunningLfx, start_app: StartApp
) -> None:
    app = start_app(env=run_env(lfx_server, "slow_chat"))
    async with (
        httpx.AsyncClient(base_url=app.url, timeout=30) as http,
        ws_connect(app.ws_url, "halt") as ws,
    ):
        await recv(ws)
        await say(http, "halt", "count for me")
        # Stop once some of the counting has streamed.
        text = ""
        while " 3" not in text:
            events = await recv_until(ws, lambda e: e["event"] == "stream.delta", 20)
            text += "".join(e["delta"] for e in of(events, "stream.delta"))
        await ws.send(json.dumps({"event": "stop"}))
        events = await until_run_end(ws)
        end = of(events, "stream.end")[0]["message"]
        assert end["stopped"] is True
        assert end["content"].startswith("You said: count for me 1 2 3"), end
        assert not end["content"].endswith(" 200")
        assert of(events, "run.end")[0]["outcome"] == "stopped"
        assert (await history(http, "halt"))[-1] == end
    # The request to lfx was closed, and lfx cancelled the run there.
    lfx = lfx_server
    await asyncio.to_thread(  # lfx writes its trace file; nothing announces it
        wait_until,
        lambda: any(r["event"] != "start" for r in reply_records(lfx, "halt")),
        20,
        "the lfx trace of the stopped reply",
    )
    ended = [r["event"] for r in reply_records(lfx, "halt") if r["event"] != "start"]
    assert ended[0] in ("cancelled", "closed"), ended


async def test_langflow_down_is_reported_then_a_later_message_is_answered(
    start_lfx: StartLfx, start_app: StartApp
) -> None:
    lfx = start_lfx()
    lfx.stop()
    app = start_app(env=run_env(lfx, "stream_chat"))
    async with (
        httpx.AsyncClient(base_url=app.url, timeout=30) as http,
        ws_connect(app.ws_url, "down") as ws,
    ):
        await recv(ws)
        await say(http, "down", "anyone there?")
        end = of(await until_run_end(ws), "run.end")[0]
        assert end["outcome"] == "error"
        assert end["reason"] == (
            f"The assistant is unavailable: cannot reach Langflow at {lfx.url}"
        )
        assert lfx.api_key not in end["reason"]
        lfx.start()
        await say(http, "down", "and now?")
        events = await until_run_end(ws)
        assert of(events, "run.end")[0]["outcome"] == "done"
        stored = await history(http, "down")
        assert [(m["role"], m["content"]) for m in stored[1:]] == [
            ("user", "anyone there?"),
            ("user", "and now?"),
            ("ai", "You said: and now?"),
        ]


@LFX_GROUP
async def test_a_wrong_flow_or_key_gets_langflow_own_error(
    lfx_server: RunningLfx, start_app: StartApp
) -> None:
    wrong_flow = start_app(
        env=run_env(lfx_server, "stream_chat", BRIDGE_FLOW="00000000-0000-0000-0000-000000000000")
    )
    wrong_key = start_app(
        env=run_env(lfx_server, "stream_chat", BRIDGE_LANGFLOW_API_KEY="not-the-key")
    )
    for app in (wrong_flow, wrong_key):
        async with (
            httpx.AsyncClient(base_url=app.url, timeout=30) as http,
            ws_connect(app.ws_url, "wrong") as ws,
        ):
            await recv(ws)
            await say(http, "wrong", "hello?")
            end = of(await until_run_end(ws), "run.end")[0]
            assert end["outcome"] == "error"
            assert end["reason"].startswith(
                f"The assistant is unavailable: Langflow at {lfx_server.url} answered 4"
            ), end
            assert "not-the-key" not in end["reason"]


async def test_a_silent_run_times_out(start_lfx: StartLfx, start_app: StartApp) -> None:
    lfx = start_lfx(token_delay=30)  # slow_chat's counting: a token every 30 s
    app = start_app(env=run_env(lfx, "slow_chat", BRIDGE_RUN_TIMEOUT_S="1"))
    async with (
        httpx.AsyncClient(base_url=app.url, timeout=30) as http,
        ws_connect(app.ws_url, "silent") as ws,
    ):
        await recv(ws)
        await say(http, "silent", "take your time")
        end = of(await until_run_end(ws), "run.end")[0]
        assert end["outcome"] == "error"
        assert end["reason"] == (
            f"The assistant did not answer: Langflow at {lfx.url} sent nothing for 1 s "
            "(BRIDGE_RUN_TIMEOUT_S)"
        )
        assert [m["role"] for m in (await history(http, "silent"))[1:]] == ["user"]


@LFX_GROUP
async def test_kill_9_mid_run_the_message_is_answered_once_after_restart(
    lfx_server: RunningLfx, start_bridge: StartBridge
) -> None:
    bridge = start_bridge("sqlite", env=run_env(lfx_server, "slow_chat", BRIDGE_LISTEN_LEASE_S="2"))
    async with httpx.AsyncClient(base_url=bridge.url, timeout=30) as http:
        async with ws_connect(bridge.ws_url, "crash") as ws:
            await recv(ws)
            await say(http, "crash", "survive this")
            await recv_until(ws, lambda e: e["event"] == "stream.delta", 20)  # mid-run
            bridge.kill()
        bridge.start()  # the same SQLite file: the message's lease runs out, it runs again
        stored = await wait_for_reply(http, bridge.ws_url, "crash", 1, timeout=60)
        reply = stored[-1]
        assert reply["role"] == "ai" and "stopped" not in reply
        assert reply["content"].startswith("You said: survive this 1 2 3")
        assert reply["content"].endswith(" 199 200")
        # Answered once: the next message is answered after it, and nothing else was.
        await say(http, "crash", "and then")
        stored = await wait_for_reply(http, bridge.ws_url, "crash", 2, timeout=60)
        assert [(m["role"], m["content"].split(" 1 ")[0]) for m in stored[1:]] == [
            ("user", "survive this"),
            ("ai", "You said: survive this"),
            ("user", "and then"),
            ("ai", "You said: and then"),
        ]
    starts = [r for r in reply_records(lfx_server, "crash") if r["event"] == "start"]
    assert [r["input"] for r in starts] == ["survive this", "survive this", "and then"]


@pytest.mark.redis
@LFX_GROUP
async def test_two_instances_on_redis_run_each_message_once(
    lfx_server: RunningLfx, start_bridge: StartBridge
) -> None:
    prefix = new_prefix("runs")
    env = run_env(lfx_server, "stream_chat")
    bridges = [start_bridge(store_url(prefix), env=env) for _ in range(2)]
    sessions = [f"shared-{prefix}-{n}" for n in range(4)]
    try:
        async with (
            httpx.AsyncClient(base_url=bridges[0].url, timeout=30) as one,
            httpx.AsyncClient(base_url=bridges[1].url, timeout=30) as two,
        ):
            for turn in range(3):
                await asyncio.gather(
                    *(
                        say((one, two)[(n + turn) % 2], session, f"m{turn} of {n}")
                        for n, session in enumerate(sessions)
                    )
                )
            for n, session in enumerate(sessions):
                stored = await wait_for_reply(one, bridges[0].ws_url, session, 3, timeout=60)
                replies = [m["content"] for m in stored if m["role"] == "ai"][1:]
                assert replies == [f"You said: m{turn} of {n}" for turn in range(3)]
        starts = [
            r for s in sessions for r in reply_records(lfx_server, s) if r["event"] == "start"
        ]
        assert len(starts) == 12  # one run per message, whichever instance took it
    finally:
        await wipe(prefix)


@LFX_GROUP
async def test_a_model_that_does_not_stream_gives_its_reply_whole(
    lfx_server: RunningLfx, start_app: StartApp
) -> None:
    app = start_app(env=run_env(lfx_server, "whole_chat"))
    async with (
        httpx.AsyncClient(base_url=app.url, timeout=30) as http,
        ws_connect(app.ws_url, "whole") as ws,
    ):
        await recv(ws)
        await say(http, "whole", "all at once")
        events = await until_run_end(ws)
        assert [e["delta"] for e in of(events, "stream.delta")] == ["You said: all at once"]
        assert of(events, "stream.end")[0]["message"]["content"] == "You said: all at once"
        assert of(events, "run.end")[0]["outcome"] == "done"


@LFX_GROUP
async def test_messages_stored_while_no_runner_ran_or_cut_by_a_restart_are_answered(
    lfx_server: RunningLfx, start_bridge: StartBridge
) -> None:
    plain = start_bridge("sqlite")  # no runner: the message waits in the store
    async with httpx.AsyncClient(base_url=plain.url, timeout=30) as http:
        await say(http, "later", "answer me when you can")
    plain.stop()
    runner = start_bridge("sqlite", env=run_env(lfx_server, "slow_chat"))
    async with httpx.AsyncClient(base_url=runner.url, timeout=30) as http:
        async with ws_connect(runner.ws_url, "later") as ws:
            await recv(ws)
            # Answered on its own; a graceful restart (SIGTERM) in the middle gives the
            # message back, and the restarted bridge runs it again at once.
            await recv_until(ws, lambda e: e["event"] == "stream.delta", 30)
        runner.stop()
        runner.start()
        stored = await wait_for_reply(http, runner.ws_url, "later", 1, timeout=60)
    assert [(m["role"], m["content"][:32]) for m in stored[1:]] == [
        ("user", "answer me when you can"),
        ("ai", "You said: answer me when you can"),
    ]
    assert stored[-1]["content"].endswith(" 200")
