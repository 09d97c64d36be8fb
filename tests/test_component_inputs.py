"""Bad input gives a clear error before anything is sent; requests carry what they must.

A stand-in HTTP server records the raw requests (it answers like the bridge, or like Langflow's
webhook for Send's Rerun Flow); no bridge process is needed here.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any
from urllib.parse import unquote

import lfx  # noqa: F401  (the `langflow` extra: missing is a failure, never a skip)
import pytest

from tests.langflow_support import LFX_WARNING_FILTERS, make_component
from tests.langflow_support.recorder import Recorded, Reply, recording_server
from tests.support import free_port

pytestmark = [pytest.mark.langflow, *(pytest.mark.filterwarnings(f) for f in LFX_WARNING_FILTERS)]

STORED = {
    "id": "m1", "session_id": "s", "seq": 2, "role": "ai", "content": "x", "type": "text",
    "created_at": 0.0,
}  # fmt: skip


def stored_reply(request: Recorded) -> Reply:
    """The bridge's answer to a posted message: the message as stored."""
    session = unquote(request.path.split("?")[0].split("/")[-2])
    return Reply(200, {**STORED, **request.json(), "session_id": session})


def bridge_like(request: Recorded) -> Reply:
    """Answers as the bridge would for the requests these tests make."""
    if request.path.startswith("/api/v1/listen/message"):
        return Reply(200, {**STORED, "role": "user", "content": "hi", "history": []})
    if request.method == "POST" and request.path.split("?")[0].endswith("/messages"):
        return stored_reply(request)
    return Reply(200, STORED)


@pytest.fixture
def recorder() -> Any:
    with recording_server(bridge_like) as running:
        yield running


# ------------------------------------------------------------- errors before any request


@pytest.mark.parametrize(
    ("params", "error", "match"),
    [
        ({"role": "bot"}, ValueError, r"Role must be one of ai, user; got 'bot'"),
        ({"role": ""}, ValueError, r"Role must be one of ai, user; got ''"),
        ({"session_id": ""}, ValueError, r"Session ID is empty"),
        ({"session_id": "   "}, ValueError, r"Session ID is empty"),
        ({"session_id": ".."}, ValueError, r"not a valid session id"),
        ({"base_url": "ftp://host"}, ValueError, r"Base URL must start with http:// or https://"),
        ({"base_url": "", "port": "seven"}, ValueError, r"Port must be a whole number"),
        ({"base_url": "", "port": 70000}, ValueError, r"Port must be between 1 and 65535"),
        ({"langflow_url": "localhost:7860"}, ValueError, r"Langflow URL must start with http"),
    ],
)
async def test_send_rejects_bad_input_before_sending(
    recorder: Any, params: dict[str, Any], error: type[Exception], match: str
) -> None:
    inputs = {"base_url": recorder.url, "session_id": "s", "message": "x", **params}
    send = make_component("send", **inputs)
    with pytest.raises(error, match=match):
        await send.text_response()
    assert recorder.requests == []


@pytest.mark.parametrize(
    ("stem", "params", "match"),
    [
        ("listen", {"timeout": 0}, r"Timeout must be at least 1 second"),
        ("listen", {"write_speed": -1}, r"Write Speed cannot be negative"),
        ("chat_template", {"write_speed": "fast"}, r"Write Speed must be a number"),
        ("get_session_messages", {"session_id": "s", "limit": -1}, r"Limit cannot be negative"),
        ("get_session_messages", {"session_id": ""}, r"Session ID is empty"),
        ("stream", {"session_id": "s", "input_value": "hi"}, r"Language Model is not connected"),
        ("stream", {"session_id": "s", "role": "bot"}, r"Role must be one of"),
    ],
)
async def test_other_components_reject_bad_input_before_sending(
    recorder: Any, stem: str, params: dict[str, Any], match: str
) -> None:
    component = make_component(stem, base_url=recorder.url, **params)
    output = component.outputs[0].method
    with pytest.raises(ValueError, match=match):
        await getattr(component, output)()
    assert recorder.requests == []


@pytest.mark.parametrize("stem", ["send", "listen", "chat_template", "get_last_session"])
async def test_a_bridge_that_is_down_is_named_in_the_error(stem: str) -> None:
    port = free_port()  # nothing listens there
    params = {"send": {"session_id": "s", "message": "x"}}.get(stem, {})
    component = make_component(stem, hostname="127.0.0.1", port=port, **params)
    output = component.outputs[0].method
    with pytest.raises(ConnectionError) as caught:
        await getattr(component, output)()
    message = str(caught.value)
    assert message.startswith(f"Cannot reach the Streamlit bridge at http://127.0.0.1:{port} (")
    assert "streamlit-bridge serve" in message
    # Langflow shows only the message: no httpx exception chained behind it.
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


async def test_an_unexpected_status_names_the_call_and_the_bridges_detail() -> None:
    def refuse(_: Recorded) -> Reply:
        return Reply(413, {"detail": "message too large: 70000 bytes, limit 65536"})

    with recording_server(refuse) as server:
        send = make_component("send", base_url=server.url, session_id="s", message="x" * 70000)
        with pytest.raises(RuntimeError) as caught:
            await send.text_response()
    assert str(caught.value) == (
        f"The Streamlit bridge at {server.url} refused POST /api/v1/sessions/s/messages "
        "(HTTP 413): message too large: 70000 bytes, limit 65536."
    )


async def test_validation_errors_from_the_bridge_are_readable() -> None:
    def refuse(_: Recorded) -> Reply:
        detail = [{"loc": ["body", "content"], "msg": "Field required", "type": "missing"}]
        return Reply(422, {"detail": detail})

    with recording_server(refuse) as server:
        send = make_component("send", base_url=server.url, session_id="s", message="x")
        with pytest.raises(RuntimeError, match=r"\(HTTP 422\): content: Field required\.$"):
            await send.text_response()


# --------------------------------------------------------------------- what requests carry


async def test_session_id_is_percent_encoded_and_the_key_sent(recorder: Any) -> None:
    """The documented Send put `a/b?c=1 d` into the URL raw and hit another route."""
    send = make_component(
        "send", base_url=recorder.url + "/prefix/", session_id="a/b?c=1 d", message="hé",
        role="user", api_key="secret-1",
    )  # fmt: skip
    await send.text_response()
    (request,) = recorder.requests
    assert (request.method, request.path) == (
        "POST",
        "/prefix/api/v1/sessions/a%2Fb%3Fc%3D1%20d/messages",
    )
    assert request.headers["x-api-key"] == "secret-1"
    assert request.json() == {"role": "user", "content": "hé", "type": "text"}


async def test_no_key_header_without_a_key(recorder: Any) -> None:
    await make_component("send", base_url=recorder.url, session_id="s", message="x").text_response()
    assert "x-api-key" not in recorder.requests[0].headers


async def test_listen_sends_the_documented_requests(recorder: Any) -> None:
    listen = make_component(
        "listen", base_url=recorder.url, timeout=30, welcome_msg="W", input_msg="I",
        write_speed=0.1, ai_avatar="", user_avatar="🙂",
    )  # fmt: skip
    await listen.session_id_response()
    template, poll = recorder.requests
    assert (template.method, template.path) == ("POST", "/api/v1/chats")
    # Empty avatars are left out, as the documented Listen did.
    assert template.json() == {"welcome_msg": "W", "input_msg": "I", "write_speed": 0.1,
                               "user_avatar": "🙂"}  # fmt: skip
    assert (poll.method, poll.path) == ("GET", "/api/v1/listen/message?timeout=30")


@pytest.mark.slow
async def test_listen_outwaits_httpx_default_timeout() -> None:
    """The long poll may take its whole timeout: the read timeout must be longer than
    httpx's default 5 s (the bridge answers 204 only when the timeout is over)."""

    def slow_no_message(request: Recorded) -> Reply:
        if request.path.startswith("/api/v1/listen/message"):
            return Reply(204, None, delay=5.5)
        return Reply(200, {})

    with recording_server(slow_no_message) as server:
        listen = make_component("listen", base_url=server.url, timeout=6)
        with pytest.raises(TimeoutError, match=r"^No user message within 6 s"):
            await listen.session_id_response()


# ---------------------------------------------------------------------- Send: Rerun Flow


def webhook(status: int) -> Any:
    def answer(request: Recorded) -> Reply:
        if request.path.startswith("/api/v1/listen/message"):
            return Reply(200, {**STORED, "session_id": "tab-1", "role": "user", "content": "hi",
                               "history": []})  # fmt: skip
        if request.path.startswith("/api/v1/webhook/"):
            return Reply(status, {"message": "Task started in the background"})
        return stored_reply(request)

    return answer


async def run_listen_send_flow(server_url: str, sends: int = 1, **send_inputs: Any) -> None:
    """Run a Listen -> Send graph (`sends` Send nodes) under a flow id, as Langflow runs a
    saved flow."""
    from lfx.graph import Graph

    graph = Graph(flow_id="0d5c8a3e-0000-4000-8000-00000000f10e")
    listen = make_component("listen", base_url=server_url, timeout=5, _id="listen")
    graph.add_component(listen)
    for i in range(sends):
        send = make_component(
            "send", base_url=server_url, langflow_url=server_url, _id=f"send-{i}", **send_inputs
        )
        send.set(session_id=listen.session_id_response, message=listen.message_content_response)
        graph.add_component(send)
    # fallback_to_env_vars: the Langflow API key input names a variable, resolved from the env
    # here as Langflow resolves it from its global variables.
    async with asyncio.timeout(30):
        async for _ in graph.async_start(fallback_to_env_vars=True):
            pass


async def test_rerun_starts_one_separate_run_through_langflows_webhook() -> None:
    os.environ["SB_TEST_LANGFLOW_KEY"] = "lf-key-1"
    try:
        with recording_server(webhook(202)) as server:
            await run_listen_send_flow(server.url, langflow_api_key="SB_TEST_LANGFLOW_KEY")
    finally:
        del os.environ["SB_TEST_LANGFLOW_KEY"]
    calls = [r for r in server.requests if r.path.startswith("/api/v1/webhook/")]
    assert len(calls) == 1  # one new top-level run, started after the message was stored
    (call,) = calls
    assert call.path == "/api/v1/webhook/0d5c8a3e-0000-4000-8000-00000000f10e"
    assert call.json() == {"source": "streamlit-bridge", "session_id": "tab-1"}
    assert call.headers["x-api-key"] == "lf-key-1"
    paths = [r.path.split("?")[0] for r in server.requests]
    assert paths.index("/api/v1/sessions/tab-1/messages") < paths.index(call.path)


async def test_rerun_is_skipped_when_no_listen_ran() -> None:
    """A flow that does not wait for the user would start itself again forever."""
    from lfx.graph import Graph

    with recording_server(webhook(202)) as server:
        send = make_component(
            "send", base_url=server.url, langflow_url=server.url, session_id="s", message="x"
        )
        graph = Graph(flow_id="0d5c8a3e-0000-4000-8000-00000000f10f")
        graph.add_component(send)
        async with asyncio.timeout(30):
            async for _ in graph.async_start():
                pass
    assert [r.path for r in server.requests] == ["/api/v1/sessions/s/messages"]


async def test_two_sends_in_one_run_start_one_next_run() -> None:
    """Each run must start at most one run, or the waiting runs would double every turn."""
    with recording_server(webhook(202)) as server:
        await run_listen_send_flow(server.url, sends=2)
    posts = [r for r in server.requests if r.path == "/api/v1/sessions/tab-1/messages"]
    assert len(posts) == 2
    assert len([r for r in server.requests if r.path.startswith("/api/v1/webhook/")]) == 1


async def test_rerun_off_starts_nothing() -> None:
    with recording_server(webhook(202)) as server:
        await run_listen_send_flow(server.url, rerun=False)
    assert not [r for r in server.requests if r.path.startswith("/api/v1/webhook/")]


async def test_a_refused_rerun_says_the_message_was_delivered() -> None:
    from lfx.exceptions.component import ComponentBuildError

    with recording_server(webhook(403)) as server, pytest.raises(ComponentBuildError) as caught:
        await run_listen_send_flow(server.url)
    message = str(caught.value)
    assert "The message was delivered, but Langflow at" in message
    assert "refused to start the next run (HTTP 403)" in message
    stored = [r for r in server.requests if r.path == "/api/v1/sessions/tab-1/messages"]
    assert len(stored) == 1 and json.loads(stored[0].body)["content"] == "hi"
