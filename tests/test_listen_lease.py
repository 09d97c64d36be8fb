"""Listen leases against real bridge processes: a message Listen took whose run never
answered (the flow failed after Listen) is handed out again, to a call already waiting,
until it is answered or `BRIDGE_LISTEN_ATTEMPTS_MAX` claims were made."""

from __future__ import annotations

import asyncio
import re

import httpx
import pytest

from bridge.errors import InvalidInput
from bridge.settings import Settings
from tests.conftest import StartBridge

LEASE = {"BRIDGE_LISTEN_LEASE_S": "1"}


def test_lease_settings_default_and_bounds() -> None:
    settings = Settings.load({})
    assert (settings.listen_lease_s, settings.listen_attempts_max) == (300.0, 3)
    off = Settings.load({"BRIDGE_LISTEN_LEASE_S": "0", "BRIDGE_LISTEN_ATTEMPTS_MAX": "100"})
    assert (off.listen_lease_s, off.listen_attempts_max) == (0.0, 100)
    for env in (
        {"BRIDGE_LISTEN_LEASE_S": "0.5"},  # would re-offer messages still being answered
        {"BRIDGE_LISTEN_LEASE_S": "-1"},
        {"BRIDGE_LISTEN_LEASE_S": "86401"},
        {"BRIDGE_LISTEN_ATTEMPTS_MAX": "0"},
        {"BRIDGE_LISTEN_ATTEMPTS_MAX": "101"},
    ):
        with pytest.raises(InvalidInput, match="listen_"):
            Settings.load(env)


async def _post(http: httpx.AsyncClient, session: str, content: str, role: str = "user") -> int:
    resp = await http.post(
        f"/api/v1/sessions/{session}/messages", json={"role": role, "content": content}
    )
    assert resp.status_code == 200, resp.text
    seq: int = resp.json()["seq"]
    return seq


async def _listen(http: httpx.AsyncClient, timeout: float) -> httpx.Response:
    return await http.get("/api/v1/listen/message", params={"timeout": timeout})


async def _until_waiting(http: httpx.AsyncClient, count: float) -> None:
    """Until `count` Listen calls are parked in the bridge (bounded)."""
    async with asyncio.timeout(10):
        while True:
            text = (await http.get("/metrics")).text
            found = re.search(r"^bridge_listen_waiting (\S+)$", text, re.M)
            if found is not None and float(found.group(1)) == count:
                return
            await asyncio.sleep(0.02)  # poll interval of /metrics


async def test_a_waiting_listen_gets_an_unanswered_message_again(
    start_bridge: StartBridge,
) -> None:
    bridge = start_bridge(env=LEASE)
    async with httpx.AsyncClient(base_url=bridge.url, timeout=60) as http:
        seq = await _post(http, "s", "is anyone there?")
        first = await _listen(http, 5)
        assert first.status_code == 200
        body = first.json()
        assert body["attempt"] == 1
        # The documented answer is all there, with the history before the message.
        assert (body["role"], body["content"], body["type"]) == ("user", "is anyone there?", "text")
        assert [m["role"] for m in body["history"]] == ["ai"]  # the welcome
        # The flow fails after Listen: nobody answers. A run waiting for the next message
        # is woken when the lease runs out, although no new message arrives.
        again = asyncio.create_task(_listen(http, 20))
        await _until_waiting(http, 1)
        resp = await again
        assert resp.status_code == 200, "the unanswered message was not handed out again"
        assert (resp.json()["seq"], resp.json()["attempt"]) == (seq, 2)
        assert resp.json()["history"] == body["history"]


@pytest.mark.parametrize("how", ["post", "stream"])
async def test_an_answer_ends_the_lease(start_bridge: StartBridge, how: str) -> None:
    bridge = start_bridge(env=LEASE)
    async with httpx.AsyncClient(base_url=bridge.url, timeout=60) as http:
        await _post(http, "s", "question")
        assert (await _listen(http, 5)).json()["attempt"] == 1  # that run failed
        assert (await _listen(http, 20)).json()["attempt"] == 2  # this one answers:
        if how == "post":
            await _post(http, "s", "the answer", role="ai")
        else:
            resp = await http.post(
                "/api/v1/sessions/s/messages/stream", params={"role": "ai"}, content=b"streamed"
            )
            assert resp.status_code == 200, resp.text
        # Three times the lease: an unanswered message would be back by then.
        assert (await _listen(http, 3)).status_code == 204


async def test_after_the_last_attempt_the_message_is_given_up_once(
    start_bridge: StartBridge,
) -> None:
    bridge = start_bridge(env={**LEASE, "BRIDGE_LISTEN_ATTEMPTS_MAX": "2"})
    async with httpx.AsyncClient(base_url=bridge.url, timeout=60) as http:
        seq = await _post(http, "lost", "nobody will answer")
        assert (await _listen(http, 5)).json()["attempt"] == 1
        assert (await _listen(http, 20)).json()["attempt"] == 2
        assert (await _listen(http, 3)).status_code == 204  # given up, not handed out
        assert (await _listen(http, 0)).status_code == 204
    given_up = re.findall(
        rf"Listen message seq {seq} of session 'lost' is given up unanswered after 2 attempt",
        bridge.log_path.read_text(),
    )
    assert len(given_up) == 1, bridge.log_path.read_text()[-3000:]


async def test_a_lease_outlives_a_restart_with_sqlite(start_bridge: StartBridge) -> None:
    bridge = start_bridge("sqlite", env=LEASE)
    async with httpx.AsyncClient(base_url=bridge.url, timeout=60) as http:
        seq = await _post(http, "kept", "asked before the restart")
        assert (await _listen(http, 5)).json()["attempt"] == 1
    bridge.restart()  # SIGTERM: the run that took it is gone, and so is the lease timer
    async with httpx.AsyncClient(base_url=bridge.url, timeout=60) as http:
        # No timer of the new process knows of the lease: the next claim finds it once it
        # has run out (here a claim with timeout 0, repeated until then).
        async with asyncio.timeout(20):
            while (resp := await _listen(http, 0)).status_code == 204:
                await asyncio.sleep(0.05)  # poll interval
        assert resp.status_code == 200
        assert (resp.json()["seq"], resp.json()["attempt"]) == (seq, 2)
