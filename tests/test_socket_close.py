"""Why and when the bridge closes a socket, against real bridge processes (issue 10):

- a close reason is cut to the 123 bytes of UTF-8 a close frame holds, so that a refusal
  naming a non-ASCII Origin or session id still arrives as 1008/1007 (item 11);
- a socket opened with a session token is closed with 1008 when the token expires, and
  with 4004 after its session was deleted (item 14).
"""

from __future__ import annotations

import asyncio
import time
from urllib.parse import quote

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.conftest import StartBridge
from tests.support import RunningBridge
from tests.test_socket_bounds import raw_socket, read_close
from tests.wsclient import Event, recv

KEY = "close-key-0123456789abcdef"


@pytest.mark.parametrize("char", ["é", "😀"])
async def test_long_non_ascii_origin_and_session_id_close_with_their_codes(
    bridge: RunningBridge, char: str
) -> None:
    """Before: the reason (the Origin or id quoted, up to 80/40 characters) was cut by
    characters, was longer than a close frame allows, and the close failed: a traceback
    in the log and 1006 for the client."""
    origin = ("http://" + char * 100).encode()
    sock, rest = raw_socket(
        bridge.port, "/api/v1/sessions/o/ws", headers=b"Origin: " + origin + b"\r\n"
    )
    with sock:
        code, reason = read_close(sock, rest)
    assert code == 1008, (code, reason)
    assert len(reason) <= 123 and "is not allowed" not in reason.decode()  # cut, and valid
    assert reason.decode().startswith("origin http://")

    path = f"/api/v1/sessions/{quote(char * 100)}/ws"
    sock, rest = raw_socket(bridge.port, path)
    with sock:
        code, reason = read_close(sock, rest)
    assert code == 1007, (code, reason)
    assert len(reason) <= 123 and reason.decode().startswith("invalid session id")
    assert "Exception in ASGI application" not in bridge.log_path.read_text()


async def _token(bridge: RunningBridge, session: str) -> dict[str, object]:
    async with httpx.AsyncClient(base_url=bridge.url, headers={"x-api-key": KEY}) as http:
        resp = await http.post(f"/api/v1/sessions/{session}/token")
        assert resp.status_code == 200, resp.text
        minted: dict[str, object] = resp.json()
        return minted


async def _until_closed(ws: ClientConnection, timeout: float) -> tuple[list[Event], int, str]:
    """Every event until the socket closes; then the close code and reason."""
    events: list[Event] = []
    with pytest.raises(ConnectionClosed) as closed:
        async with asyncio.timeout(timeout):
            while True:
                events.append(await recv(ws, timeout))
    assert closed.value.rcvd is not None, "closed without a close frame"
    return events, closed.value.rcvd.code, closed.value.rcvd.reason


async def test_socket_is_closed_when_its_token_expires(start_bridge: StartBridge) -> None:
    """Before: a token was checked at the handshake only; the socket outlived it."""
    bridge = start_bridge(env={"BRIDGE_API_KEY": KEY, "BRIDGE_TOKEN_TTL_S": "3"})
    minted = await _token(bridge, "exp")
    url = f"{bridge.ws_url}/api/v1/sessions/exp/ws?token={minted['token']}"
    async with connect(url) as ws:
        events, code, reason = await _until_closed(ws, 15)
    assert events[0]["event"] == "hello"
    assert code == 1008 and reason == "session token expired"
    assert time.time() >= float(minted["expires_at"])  # type: ignore[arg-type]


async def test_token_socket_closed_with_4004_after_its_session_is_deleted(
    start_bridge: StartBridge,
) -> None:
    """With tokens, a deleted session's sockets get `reset` then close 4004 (deleting one
    session, or all of them): they must not go on to receive a re-created session's
    messages. Before: `reset`, and the socket stayed subscribed."""
    bridge = start_bridge(env={"BRIDGE_API_KEY": KEY})
    base = f"{bridge.ws_url}/api/v1/sessions"
    async with httpx.AsyncClient(base_url=bridge.url, headers={"x-api-key": KEY}) as http:
        one, other = await _token(bridge, "gone"), await _token(bridge, "kept")
        async with (
            connect(f"{base}/gone/ws?token={one['token']}") as ws,
            connect(f"{base}/kept/ws?token={other['token']}") as bystander,
        ):
            assert (await recv(ws))["event"] == "hello"
            assert (await recv(bystander))["event"] == "hello"
            assert (await http.delete("/api/v1/sessions/gone")).status_code == 200
            events, code, reason = await _until_closed(ws, 10)
            assert [e["event"] for e in events if e["event"] != "message"][-1] == "reset"
            assert code == 4004 and reason == "session deleted"
            # The other session's socket is untouched until everything is reset.
            await bystander.send('{"event": "ping"}')
            while (await recv(bystander))["event"] != "pong":
                pass
            assert (await http.post("/api/v1/reset/messages")).status_code == 200
            events, code, reason = await _until_closed(bystander, 10)
            assert events[-1]["event"] == "reset"
            assert code == 4004 and reason == "session deleted"
