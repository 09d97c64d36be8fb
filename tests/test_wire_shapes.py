"""`bridge.wire`: each wire shape, default and close rule is declared once and is what the
server, the clients and the OpenAPI description all use (no bridge process needed)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

import bridge.models
import bridge.schemas
import bridge.service
import streamlit_client
import streamlit_client.models
from bridge.app import create_app
from bridge.settings import Settings
from bridge.wire import (
    CLOSE_CODES,
    DEFAULT_BRIDGE_URL,
    DEFAULT_PAGE_PORT,
    TOKEN_EXPIRED,
    AfterClose,
    Listened,
    StoredMessage,
    Template,
    after_close,
    close_policy,
    page_origins,
)
from streamlit_client.client import BridgeClient
from streamlit_client.config import ChatConfig
from tests.support import ROOT

MESSAGE = StoredMessage("m-1", "s", 2, "user", "hé", "text", 1.5)


def test_every_name_of_a_shape_is_the_one_declaration() -> None:
    messages = (bridge.models.StoredMessage, bridge.schemas.MessageOut, streamlit_client.Message)
    for message in messages:
        assert message is StoredMessage
    for template in (bridge.models.Template, streamlit_client.Template):
        assert template is Template
    for listened in (bridge.service.Listened, streamlit_client.models.Listened):
        assert listened is Listened


def test_the_defaults_are_the_wires() -> None:
    assert BridgeClient().base_url == DEFAULT_BRIDGE_URL
    assert ChatConfig().bridge_url == ChatConfig.from_env({}).bridge_url == DEFAULT_BRIDGE_URL
    settings = Settings()
    assert f"http://{settings.host}:{settings.port}" == DEFAULT_BRIDGE_URL
    assert settings.allowed_origins == page_origins(DEFAULT_PAGE_PORT)
    assert Template().port == DEFAULT_PAGE_PORT


def test_shapes_read_back_what_they_write() -> None:
    assert StoredMessage.from_dict(json.loads(MESSAGE.to_json())) == MESSAGE
    listened = Listened(MESSAGE, (MESSAGE,), attempt=2)
    again = Listened.from_dict(json.loads(json.dumps(listened.to_dict())))
    assert (again.message, tuple(again.history), again.attempt) == (MESSAGE, (MESSAGE,), 2)
    template = Template(welcome_msg="Yo", ai_avatar="🤖", write_speed=0.0)
    assert Template.from_dict(template.to_dict()) == template


def test_only_a_stopped_reply_says_so_and_it_reads_back() -> None:
    assert "stopped" not in MESSAGE.to_dict()  # every other frame as it always was
    assert MESSAGE.to_json() == (
        '{"id":"m-1","session_id":"s","seq":2,"role":"user","content":"hé","type":"text",'
        '"created_at":1.5}'
    )
    stopped = StoredMessage("m-2", "s", 3, "ai", "half an ans", "text", 2.5, True)
    assert stopped.to_dict()["stopped"] is True
    assert StoredMessage.from_dict(json.loads(stopped.to_json())) == stopped
    assert StoredMessage.from_dict(MESSAGE.to_dict()).stopped is False
    draft = bridge.models.Draft("ai", "half", "text", "d-1", "k")  # positional as before
    assert not draft.stopped and bridge.models.Draft.build("ai", "x", stopped=True).stopped
    as_stored = StoredMessage.from_draft("s", 4, bridge.models.Draft("ai", "x", stopped=True))
    assert as_stored.stopped and as_stored.seq == 4
    listened = Listened.from_dict(json.loads(json.dumps(Listened(MESSAGE, (stopped,)).to_dict())))
    assert tuple(listened.history) == (stopped,)


def test_clients_read_the_bridges_json_leniently() -> None:
    # Unknown fields (a newer bridge) are ignored; missing ones take empty values.
    assert StoredMessage.from_dict({"seq": "3", "role": "ai", "new": 1}).seq == 3
    template = Template.from_dict({"input_msg": "Ask", "new": 1, "user_avatar": None})
    assert (template.input_msg, template.user_avatar) == ("Ask", None)


def _openapi_schema(spec: dict[str, Any], path: str, method: str) -> dict[str, Any]:
    """The 200 answer's schema of one route, with its `$ref` resolved."""
    content = spec["paths"][path][method]["responses"]["200"]["content"]["application/json"]
    ref = content["schema"]["$ref"].rsplit("/", 1)[-1]
    schema: dict[str, Any] = spec["components"]["schemas"][ref]
    return schema


def test_openapi_describes_exactly_what_the_shapes_write() -> None:
    spec = create_app(Settings(store="memory://")).openapi()
    post = _openapi_schema(spec, "/api/v1/sessions/{session_id}/messages", "post")
    # `stopped` is sent only when true: described, never required.
    assert set(post["properties"]) == set(MESSAGE.to_dict()) | {"stopped"}
    assert set(post["required"]) == set(MESSAGE.to_dict())
    assert post["properties"]["stopped"]["type"] == "boolean"
    listen = _openapi_schema(spec, "/api/v1/listen/message", "get")
    assert set(listen["properties"]) == set(Listened(MESSAGE).to_dict()) | {"stopped"}
    assert set(listen["required"]) == set(MESSAGE.to_dict()) | {"history"}
    chats = _openapi_schema(spec, "/api/v1/chats", "get")
    assert set(chats["properties"]) == set(Template().to_dict())


# -- the close-code table ------------------------------------------------------------------

# protocol.md section 6 (docs/protocol.md, "Close codes"), written out as the spec says it.
SPEC = {
    1001: AfterClose.RESUME,
    1007: AfterClose.STOP,
    1008: AfterClose.STOP,
    1009: AfterClose.STOP,
    1011: AfterClose.RESUME,
    1013: AfterClose.BACK_OFF,
    4000: AfterClose.RESUME,
    4004: AfterClose.STOP,
}


@pytest.mark.parametrize("code", sorted(SPEC))
def test_each_documented_code_follows_the_protocol(code: int) -> None:
    assert after_close(code, "whatever the reason") is SPEC[code]


def test_only_an_expired_token_comes_back_from_1008_and_unknown_codes_come_back() -> None:
    assert after_close(1008, TOKEN_EXPIRED) is AfterClose.NEW_TOKEN
    assert after_close(1008, "origin not allowed") is AfterClose.STOP
    assert after_close(None) is AfterClose.RESUME  # no close frame: the network dropped
    assert after_close(4999) is AfterClose.RESUME


def test_the_listener_gets_the_same_table_and_has_none_of_its_own() -> None:
    policy = json.loads(json.dumps(close_policy()))  # what the component's data carries
    assert {int(code) for code in policy["codes"]} == set(CLOSE_CODES)
    for code, row in policy["codes"].items():
        assert row["then"] == after_close(int(code)).value
    assert (policy["token_expired"]["code"], policy["token_expired"]["reason"]) == (
        1008,
        TOKEN_EXPIRED,
    )
    source = (ROOT / "streamlit_client" / "listener.js").read_text(encoding="utf-8")
    # No code compared with or keyed by a number, no reason matched by text of its own.
    compared = re.compile(r"(?:[=!]==?|case)\s*(\d{4})\b|\b(\d{4})\s*(?:[=!]==?|:)")
    assert compared.findall(source) == []
    assert "expired/" not in source and '"expired"' not in source
