"""Each documented component's exact request against a real bridge, and what it needs back.

The documented components treat any status but 200 as failure and `json.loads` the body.
"""

from __future__ import annotations

import asyncio
import json

import httpx

from tests.support import RunningBridge
from tests.wsclient import recv_messages, recv_until, ws_connect


async def test_send_component_request(bridge: RunningBridge) -> None:
    # Send: POST {role, content}; needs 200 and a JSON body (json.loads / json.dumps).
    async with httpx.AsyncClient(base_url=bridge.url) as http:
        resp = await http.post(
            "/api/v1/sessions/tab-1/messages", json={"role": "ai", "content": "hi"}
        )
        assert resp.status_code == 200
        body = json.loads(resp.content)
        assert body["role"] == "ai" and body["content"] == "hi" and body["type"] == "text"
        # The component outputs `json.dumps(body)`: it must be the stored message, every
        # field of it, exactly as the history keeps it.
        assert set(body) == {"id", "session_id", "seq", "role", "content", "type", "created_at"}
        assert (body["session_id"], body["seq"]) == ("tab-1", 2)
        assert isinstance(body["id"], str) and body["id"]
        assert isinstance(body["created_at"], float)
        # The session did not exist: it was created with the welcome message first.
        history = (await http.get("/api/v1/sessions/tab-1/messages")).json()
        assert [m["seq"] for m in history] == [1, 2] and history[0]["role"] == "ai"
        assert history[1] == body


async def test_repeated_identical_posts_are_all_kept(bridge: RunningBridge) -> None:
    # The original dropped a post equal to the previous one; the bridge keeps both.
    async with httpx.AsyncClient(base_url=bridge.url) as http:
        for _ in range(2):
            resp = await http.post(
                "/api/v1/sessions/dup/messages", json={"role": "user", "content": "same"}
            )
            assert resp.status_code == 200
        contents = [m["content"] for m in (await http.get("/api/v1/sessions/dup/messages")).json()]
        assert contents.count("same") == 2


async def test_chat_template_component_request(bridge: RunningBridge) -> None:
    template = {
        "welcome_msg": "Welcome!",
        "input_msg": "Ask me",
        "write_speed": 0.2,
        "ai_avatar": "🤖",
        "user_avatar": "🙂",
    }
    async with httpx.AsyncClient(base_url=bridge.url) as http:
        resp = await http.post("/api/v1/chats", json=template)
        assert resp.status_code == 200
        assert resp.json()["welcome_msg"] == "Welcome!"
        created = await http.post("/api/v1/sessions/new-one")
        assert created.status_code == 200
        assert created.json()[0]["content"] == "Welcome!"
        assert (await http.get("/api/v1/chats")).json()["ai_avatar"] == "🤖"


async def test_listen_component_requests(bridge: RunningBridge) -> None:
    # Listen: POST the template, then long-poll; needs session_id, content and history.
    async with httpx.AsyncClient(base_url=bridge.url, timeout=30) as http:
        assert (
            await http.post(
                "/api/v1/chats", json={"welcome_msg": "Hello", "input_msg": "", "write_speed": 0.05}
            )
        ).status_code == 200
        waiting = asyncio.create_task(http.get("/api/v1/listen/message", params={"timeout": 20}))
        await http.post(
            "/api/v1/sessions/chat-7/messages", json={"role": "user", "content": "question"}
        )
        resp = await asyncio.wait_for(waiting, 20)
        assert resp.status_code == 200
        body = json.loads(resp.content)
        assert body["session_id"] == "chat-7" and body["content"] == "question"
        assert body["role"] == "user"
        assert [m["content"] for m in body["history"]] == ["Hello"]


async def test_get_session_messages_component_request(bridge: RunningBridge) -> None:
    async with httpx.AsyncClient(base_url=bridge.url) as http:
        for i in range(5):
            await http.post(
                "/api/v1/sessions/gsm/messages", json={"role": "user", "content": f"m{i}"}
            )
        last_two = await http.get("/api/v1/sessions/gsm/messages", params={"limit": 2})
        assert last_two.status_code == 200
        assert [m["content"] for m in json.loads(last_two.content)] == ["m3", "m4"]
        everything = (await http.get("/api/v1/sessions/gsm/messages", params={"limit": 0})).json()
        assert len(everything) == 6


async def test_get_last_session_component_request(bridge: RunningBridge) -> None:
    async with httpx.AsyncClient(base_url=bridge.url) as http:
        none_yet = await http.get("/api/v1/sessions/last")
        assert none_yet.status_code == 404 and "no session" in none_yet.json()["detail"]
        await http.post("/api/v1/sessions/first")
        await http.post("/api/v1/sessions/second/messages", json={"role": "ai", "content": "x"})
        resp = await http.get("/api/v1/sessions/last")
        assert resp.status_code == 200
        assert resp.text.strip('"') == "second"  # the component strips the quotes


async def test_other_original_routes(bridge: RunningBridge) -> None:
    async with httpx.AsyncClient(base_url=bridge.url) as http:
        created = await http.post("/api/v1/sessions/o1")
        assert created.status_code == 200 and len(created.json()) == 1
        again = await http.post("/api/v1/sessions/o1")
        assert again.status_code == 200 and again.json() == created.json()
        await http.post("/api/v1/sessions/o2/messages", json={"role": "user", "content": "u"})
        await http.post("/api/v1/sessions/o2/messages", json={"role": "ai", "content": "a"})
        assert (await http.get("/api/v1/sessions")).json() == ["o1", "o2"]
        last_user = await http.get("/api/v1/sessions/o2/messages/last", params={"role": "user"})
        assert last_user.json()["content"] == "u"
        last_any = await http.get("/api/v1/sessions/o2/messages/last", params={"role": "any"})
        assert last_any.json()["content"] == "a"
        info = (await http.get("/api/v1/sessions/o2")).json()
        assert info["last_seq"] == 3 and info["message_count"] == 3 and info["subscribers"] == 0
        assert (await http.post("/api/v1/reset/messages")).status_code == 200
        assert (await http.get("/api/v1/sessions")).json() == []


async def test_health_ready_metrics(bridge: RunningBridge) -> None:
    async with httpx.AsyncClient(base_url=bridge.url) as http:
        assert (await http.get("/healthz")).json() == {"status": "ok"}
        ready = await http.get("/readyz")
        assert ready.status_code == 200 and ready.json()["store"] == "memory://"
        await http.post("/api/v1/sessions/m/messages", json={"role": "ai", "content": "x"})
        text = (await http.get("/metrics")).text
        assert "bridge_messages_stored_total 2.0" in text
        assert "bridge_ws_connections" in text and "bridge_publish_to_send_seconds_bucket" in text


async def test_reset_messages_pushes_reset_to_every_open_socket(bridge: RunningBridge) -> None:
    # "POST /reset/messages: deletes every session; subscribers get `reset`" (protocol.md),
    # and the sockets stay open: the next message of a session is seq 1 of a new history.
    async with httpx.AsyncClient(base_url=bridge.url) as http:
        for sid in ("r1", "r2"):
            body = {"role": "user", "content": sid}
            assert (await http.post(f"/api/v1/sessions/{sid}/messages", json=body)).is_success
        async with ws_connect(bridge.ws_url, "r1") as one, ws_connect(bridge.ws_url, "r2") as two:
            for ws in (one, two):
                assert [m["seq"] for m in await recv_messages(ws, 2)] == [1, 2]  # the replay
            assert (await http.post("/api/v1/reset/messages")).json() == {"reset": True}
            for ws in (one, two):
                got = await recv_until(ws, lambda e: e["event"] not in ("presence",))
                assert got[-1] == {"event": "reset"}, got
            assert (await http.get("/api/v1/sessions")).json() == []
            posted = await http.post(
                "/api/v1/sessions/r1/messages", json={"role": "user", "content": "again"}
            )
            assert posted.json()["seq"] == 2  # the welcome is seq 1 of the new history
            fresh = await recv_messages(one, 2)
            assert [(m["seq"], m["content"]) for m in fresh][1:] == [(2, "again")]
            assert fresh[0]["seq"] == 1 and fresh[0]["role"] == "ai"
