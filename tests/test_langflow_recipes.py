"""The components in a real Langflow 1.13 server, as a user meets them.

One `langflow run` per test session (tests/langflow_support/fixtures.py) loads
`langflow_component/` through LANGFLOW_COMPONENTS_PATH. Each test builds the documented flows
through Langflow's REST API (nodes from the loaded components' templates, edges as the editor
stores them), runs them with `POST /api/v1/run/<flow>` and checks, through the real bridge's
HTTP API, that the right messages arrived in the right session.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.langflow_support import COMPONENTS, ROOT
from tests.langflow_support.server import (
    LANGFLOW_TEST_TIMEOUT,
    Node,
    RunningLangflow,
    component_results,
    edge,
)
from tests.support import RunningBridge, wait_until

pytest_plugins = ["tests.langflow_support.fixtures"]
pytestmark = [pytest.mark.langflow, pytest.mark.slow, pytest.mark.timeout(LANGFLOW_TEST_TIMEOUT)]

CUSTOM = Path(__file__).parent / "langflow_support" / "custom"
WAIT = 60.0  # seconds: bound of every wait on something a background Langflow run does


# ------------------------------------------------------------------------------ helpers


def post_user(bridge: RunningBridge, session: str, text: str) -> dict[str, Any]:
    """What a user typing in the chat tab of `session` does."""
    response = httpx.post(
        f"{bridge.url}/api/v1/sessions/{session}/messages", json={"role": "user", "content": text}
    )
    response.raise_for_status()
    return dict(response.json())


def history(bridge: RunningBridge, session: str) -> list[dict[str, Any]]:
    """The session's stored messages (empty when there is no such session)."""
    response = httpx.get(f"{bridge.url}/api/v1/sessions/{session}/messages", params={"limit": 0})
    if response.status_code in (204, 404):
        return []
    response.raise_for_status()
    return list(response.json())


def ai_replies(bridge: RunningBridge, session: str) -> list[str]:
    """The contents of the session's ai messages, except the bridge's welcome message."""
    return [
        m["content"] for m in history(bridge, session) if m["role"] == "ai" and m["id"] != "welcome"
    ]


def listen(lf: RunningLangflow, bridge: RunningBridge, timeout: int = 30, **values: Any) -> Node:
    return lf.node("StreamlitBridgeListen", base_url=bridge.url, timeout=timeout, **values)


def send(lf: RunningLangflow, bridge: RunningBridge, **values: Any) -> Node:
    values.setdefault("rerun", False)
    return lf.node("StreamlitBridgeSend", base_url=bridge.url, **values)


def custom(lf: RunningLangflow, file_name: str) -> Node:
    """A node of one of the tests' own components (tests/langflow_support/custom/)."""
    return lf.node_from_code((CUSTOM / file_name).read_text(encoding="utf-8"))


def run_ok(lf: RunningLangflow, flow_id: str, **body: Any) -> dict[str, Any]:
    response = lf.run(flow_id, **body)
    assert response.status_code == 200, response.text
    return dict(response.json())


def chat_output_texts(answer: dict[str, Any]) -> list[str]:
    """The texts the run's Chat Output components showed (the default `output_type: chat`)."""
    texts = []
    for run_output in answer["outputs"]:
        for result in run_output["outputs"]:
            message = (result or {}).get("results", {}).get("message")
            if message:
                texts.append(message["text"])
    return texts


# --------------------------------------------------------------------- loading, item 6


def test_each_component_loads_into_langflow_under_streamlit_bridge(
    langflow: RunningLangflow,
) -> None:
    loaded = langflow.catalog()["streamlit_bridge"]
    assert sorted(loaded) == sorted(langflow.component_key(c) for c in COMPONENTS.values())

    def outputs(stem: str) -> dict[str, bool]:
        template = loaded[langflow.component_key(COMPONENTS[stem])]
        return {o["name"]: o["group_outputs"] for o in template["outputs"]}

    # All outputs shown at once: one dropdown would let only one of them be connected.
    assert outputs("listen") == dict.fromkeys(
        ("session_id", "message_content", "chat_history", "history_text"), True
    )
    assert outputs("get_session_messages") == {"text": True, "data": True}
    assert outputs("send") == {"text": True, "stored_message": True}
    for stem, class_name in COMPONENTS.items():
        fields = loaded[langflow.component_key(class_name)]["template"]
        assert fields["hostname"]["display_name"] == "Hostname", stem
        if "session_id" in fields:  # the one Langflow overwrites: the info says how to pin it
            assert "pass session_id in the run request" in fields["session_id"]["info"], stem
    listen_fields = loaded[langflow.component_key("StreamlitBridgeListen")]["template"]
    assert listen_fields["apply_template"]["value"] is False
    send_fields = loaded[langflow.component_key("StreamlitBridgeSend")]["template"]
    assert send_fields["tweaks"]["advanced"] is True
    assert send_fields["tweaks"]["info"].startswith("Does nothing")
    assert "requires one" in send_fields["langflow_api_key"]["info"]


# ----------------------------------------------------------------- the documented recipes


def test_listen_prompt_model_send_answers_in_the_users_session(
    langflow: RunningLangflow, bridge: RunningBridge
) -> None:
    """Listen -> Prompt Template (History Text, Message Content) -> model -> Send, and Send's
    Message output into Chat Output, which makes the reply the run's answer."""
    lf = langflow
    listener = listen(lf, bridge)
    prompt = lf.prompt_node("Conversation so far:\n{history}\n\nUser: {question}")
    model = custom(lf, "echo_model.py")
    sender = send(lf, bridge)
    chat_output = lf.node("ChatOutput", "input_output")
    flow_id = lf.create_flow(
        "listen-prompt-model-send",
        [listener, prompt, model, sender, chat_output],
        [
            edge(listener, "history_text", prompt, "history"),
            edge(listener, "message_content", prompt, "question"),
            edge(prompt, "prompt", model, "input_value"),
            edge(model, "text_output", sender, "message"),
            edge(listener, "session_id", sender, "session_id"),
            edge(sender, "stored_message", chat_output, "input_value"),
        ],
    )
    post_user(bridge, "recipe-tab", "What is a bridge?")
    welcome = history(bridge, "recipe-tab")[0]

    answer = run_ok(lf, flow_id)

    expected = f"echo: Conversation so far:\nai: {welcome['content']}\n\nUser: What is a bridge?"
    assert ai_replies(bridge, "recipe-tab") == [expected]
    assert chat_output_texts(answer) == [expected]  # a Message, not the stored JSON
    assert history(bridge, flow_id) == []  # nothing went to a session named after the flow


def test_listen_stream_recipe_streams_the_reply_into_the_users_session(
    langflow: RunningLangflow, bridge: RunningBridge
) -> None:
    lf = langflow
    listener = listen(lf, bridge)
    model = custom(lf, "echo_model.py")
    streamer = lf.node("StreamlitBridgeStream", base_url=bridge.url)
    flow_id = lf.create_flow(
        "listen-stream",
        [listener, model, streamer],
        [
            edge(listener, "message_content", streamer, "input_value"),
            edge(listener, "session_id", streamer, "session_id"),
            edge(model, "model_output", streamer, "model"),
        ],
    )
    post_user(bridge, "stream-tab", "tell me three words")

    answer = run_ok(lf, flow_id, output_type="debug")

    assert ai_replies(bridge, "stream-tab") == ["echo: tell me three words"]
    status = component_results(answer)["Streamlit Stream"]["artifacts"]["text"]["repr"]
    assert status.startswith("Streamed 5 chunk(s), stored as #")  # one per word: streamed


def test_chat_template_last_session_and_session_messages_in_langflow(
    langflow: RunningLangflow, bridge: RunningBridge
) -> None:
    lf = langflow
    template = lf.node(
        "StreamlitBridgeChatTemplate",
        base_url=bridge.url,
        welcome_msg="Set by Chat Template",
        input_msg="Ask away",
    )
    run_ok(lf, lf.create_flow("chat-template", [template]))
    in_force = httpx.get(f"{bridge.url}/api/v1/chats").json()
    assert (in_force["welcome_msg"], in_force["input_msg"]) == ("Set by Chat Template", "Ask away")

    post_user(bridge, "older-tab", "not this one")
    post_user(bridge, "newest-tab", "read me back")
    last = lf.node("StreamlitBridgeGetLastSession", base_url=bridge.url)
    reader = lf.node("StreamlitBridgeGetSessionMessages", base_url=bridge.url, limit=0)
    flow_id = lf.create_flow(
        "last-session-messages", [last, reader], [edge(last, "text", reader, "session_id")]
    )

    answer = run_ok(lf, flow_id, output_type="debug")

    read = component_results(answer)["Streamlit Session Messages"]["outputs"]
    messages = json.loads(read["text"]["message"])
    assert [(m["session_id"], m["role"], m["content"]) for m in messages] == [
        ("newest-tab", "ai", "Set by Chat Template"),
        ("newest-tab", "user", "read me back"),
    ]


def test_listen_leaves_the_chat_template_alone_by_default(
    langflow: RunningLangflow, bridge: RunningBridge
) -> None:
    """Listen's own template fields are sent only when Send Chat Template is on."""
    lf = langflow
    template = lf.node("StreamlitBridgeChatTemplate", base_url=bridge.url, welcome_msg="Mine")
    run_ok(lf, lf.create_flow("chat-template", [template]))
    listener = listen(lf, bridge)
    sender = send(lf, bridge)
    echo = lf.create_flow(
        "echo",
        [listener, sender],
        [
            edge(listener, "session_id", sender, "session_id"),
            edge(listener, "message_content", sender, "message"),
        ],
    )
    post_user(bridge, "template-tab", "hello")

    run_ok(lf, echo)

    assert ai_replies(bridge, "template-tab") == ["hello"]
    assert httpx.get(f"{bridge.url}/api/v1/chats").json()["welcome_msg"] == "Mine"


# ----------------------------------------------------------- item 2: which session is used


def test_the_run_requests_session_id_pins_the_session_of_a_typed_session_id(
    langflow: RunningLangflow, bridge: RunningBridge
) -> None:
    """Langflow replaces every unconnected `session_id` input with the run's session id."""
    lf = langflow
    sender = send(lf, bridge, session_id="lf-test", message="posted by Send")
    flow_id = lf.create_flow("typed-session", [sender])

    run_ok(lf, flow_id, session_id="pinned-tab")
    assert ai_replies(bridge, "pinned-tab") == ["posted by Send"]
    assert history(bridge, "lf-test") == []

    run_ok(lf, flow_id)  # the run names no session: the typed one is used, not the flow id
    assert ai_replies(bridge, "lf-test") == ["posted by Send"]
    run_ok(lf, flow_id, tweaks={sender.id: {"session_id": "tweaked-tab"}})
    assert ai_replies(bridge, "tweaked-tab") == ["posted by Send"]
    assert history(bridge, flow_id) == []


def test_an_empty_session_id_is_not_replaced_by_the_flow_id(
    langflow: RunningLangflow, bridge: RunningBridge
) -> None:
    lf = langflow
    flow_id = lf.create_flow("no-session", [send(lf, bridge, message="lost?")])

    response = lf.run(flow_id)

    assert response.status_code == 500
    assert "Session ID is empty" in response.text
    assert "pass session_id in the run request" in response.text
    assert history(bridge, flow_id) == []


# ------------------------------------------------------------- item 4: an idle Listen


def test_a_listen_timeout_ends_the_run_quietly(
    langflow: RunningLangflow, bridge: RunningBridge
) -> None:
    lf = langflow
    listener = listen(lf, bridge, timeout=1)
    sender = send(lf, bridge)
    chat_output = lf.node("ChatOutput", "input_output")
    flow_id = lf.create_flow(
        "idle",
        [listener, sender, chat_output],
        [
            edge(listener, "session_id", sender, "session_id"),
            edge(listener, "message_content", sender, "message"),
            edge(sender, "stored_message", chat_output, "input_value"),
        ],
    )
    log_offset = lf.log_offset()

    response = lf.run(flow_id, output_type="debug")

    assert response.status_code == 200, response.text  # it was HTTP 500 with a traceback
    results = component_results(response.json())
    assert set(results) == {"Streamlit Listen"}  # Send and Chat Output were skipped
    said = results["Streamlit Listen"]["artifacts"]["session_id"]["repr"]
    assert said.startswith("No user message within 1 s (Streamlit Listen timeout)")
    assert httpx.get(f"{bridge.url}/api/v1/sessions/last").status_code in (204, 404)
    # Before, each idle run logged a component error with a long traceback.
    errors = [e for e in lf.errors_since(log_offset) if flow_id in e or listener.id in e]
    assert errors == []


# ----------------------------------------------------------- item 5: Send's Rerun Flow


def rerun_flow(
    lf: RunningLangflow, bridge: RunningBridge, key_variable: str | None
) -> tuple[str, Node]:
    """Listen -> Send with Rerun Flow pointing at this Langflow (key from a global variable)."""
    listener = listen(lf, bridge, timeout=5)
    sender = send(lf, bridge, rerun=True, langflow_url=lf.url)
    if key_variable is not None:
        sender.template["template"]["langflow_api_key"].update(
            value=key_variable, load_from_db=True
        )
    flow_id = lf.create_flow(
        "rerun",
        [listener, sender],
        [
            edge(listener, "session_id", sender, "session_id"),
            edge(listener, "message_content", sender, "message"),
        ],
    )
    return flow_id, sender


def test_rerun_flow_with_a_langflow_api_key_answers_the_next_message(
    langflow: RunningLangflow, bridge: RunningBridge
) -> None:
    lf = langflow
    variable = f"SB_TEST_RERUN_KEY_{uuid.uuid4().hex[:8].upper()}"
    lf.create_variable(variable, lf.create_api_key("rerun flow"))
    flow_id, _ = rerun_flow(lf, bridge, variable)
    post_user(bridge, "rerun-tab", "first")

    answer = run_ok(lf, flow_id, output_type="debug")

    status = component_results(answer)["Streamlit Send"]["artifacts"]["text"]["repr"]
    assert status.endswith("Rerun: Langflow started the next run.")
    assert ai_replies(bridge, "rerun-tab") == ["first"]
    # Nobody runs the flow now but the run that Send started through Langflow's webhook.
    post_user(bridge, "rerun-tab", "second")
    wait_until(
        lambda: ai_replies(bridge, "rerun-tab") == ["first", "second"],
        WAIT,
        "the run started by Rerun Flow to answer the second message",
    )


def test_rerun_flow_without_a_key_says_to_set_the_langflow_api_key(
    langflow: RunningLangflow, bridge: RunningBridge
) -> None:
    lf = langflow
    flow_id, _ = rerun_flow(lf, bridge, None)
    post_user(bridge, "no-key-tab", "answer me")

    response = lf.run(flow_id)

    assert response.status_code == 500
    detail = response.json()["detail"]
    assert f"The message was delivered, but Langflow at {lf.url} refused to start" in detail
    assert "(HTTP 403): API key required when webhook authentication is enabled" in detail
    assert "Set Langflow API Key to a Langflow API key" in detail
    assert ai_replies(bridge, "no-key-tab") == ["answer me"]  # the reply itself was stored


# ------------------------------------------- item 3: a failed run gives its message back


def bridge_has_listen_lease() -> bool:
    """Whether this bridge re-offers a claimed message that got no ai reply (issue 11)."""
    return any(
        "BRIDGE_LISTEN_LEASE_S" in path.read_text(encoding="utf-8")
        for path in (ROOT / "bridge").rglob("*.py")
    )


@pytest.mark.skipif(
    not bridge_has_listen_lease(),
    reason="needs the bridge's Listen lease (BRIDGE_LISTEN_LEASE_S, issue 11 item 3): runs by "
    "itself once bridge/ has it",
)
def test_a_message_whose_run_failed_is_answered_by_the_next_run(
    langflow: RunningLangflow, start_bridge: Any
) -> None:
    """Listen took the message, a later step failed: the next run's Listen gets it again."""
    lf = langflow
    bridge = start_bridge(env={"BRIDGE_LISTEN_LEASE_S": "1"})
    listener = listen(lf, bridge)
    failing = custom(lf, "failing_step.py")
    sender = send(lf, bridge)
    failing_flow = lf.create_flow(
        "listen-fail-send",
        [listener, failing, sender],
        [
            edge(listener, "message_content", failing, "input_value"),
            edge(failing, "text", sender, "message"),
            edge(listener, "session_id", sender, "session_id"),
        ],
    )
    listener2 = listen(lf, bridge, timeout=15)
    sender2 = send(lf, bridge)
    echo_flow = lf.create_flow(
        "listen-send",
        [listener2, sender2],
        [
            edge(listener2, "session_id", sender2, "session_id"),
            edge(listener2, "message_content", sender2, "message"),
        ],
    )
    post_user(bridge, "lease-tab", "please answer me")

    failed = lf.run(failing_flow)
    assert failed.status_code == 500 and "failed on purpose" in failed.text
    assert ai_replies(bridge, "lease-tab") == []

    run_ok(lf, echo_flow)  # its Listen waits until the lease of the failed run has passed

    assert ai_replies(bridge, "lease-tab") == ["please answer me"]
