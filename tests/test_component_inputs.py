"""Bad input gives a clear error before anything is sent; requests carry what they must.

A recording HTTP server stands in for the bridge, to see the raw requests each component
sends; no bridge process is needed here. Send's Rerun Flow (Langflow's webhook) is tested
against the real Langflow server in tests/test_langflow_recipes.py.
"""

from __future__ import annotations

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
        ("listen", {"write_speed": -1, "apply_template": True}, r"Write Speed cannot be negative"),
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
        write_speed=0.1, ai_avatar="", user_avatar="🙂", apply_template=True,
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
        assert (await listen.session_id_response()).text == ""
        assert listen.status.startswith("No user message within 6 s")
