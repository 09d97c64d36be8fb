"""Session tokens: signed with a key from a secret, not from the API key alone, and kept
out of logs however their parameter is spelled (issue 10, items 6 and 10).

A token goes to browsers. Signed with SHA-256 of the API key, it let its holder test
guesses of a weak key offline. Now the signing key is
HMAC-SHA256(secret, "streamlit-bridge session token\\0" + API key), the secret being
`BRIDGE_TOKEN_SECRET` or the store's random one (kept across restarts, shared by
instances on one store). All against real bridge processes.
"""

from __future__ import annotations

import hashlib
import hmac

import httpx
import jwt
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.conftest import StartBridge
from tests.support import RunningBridge
from tests.wsclient import recv

KEY = "weak-key-0123"
LABEL = b"streamlit-bridge session token\0"
SECRET = "s" * 40


async def _mint(bridge: RunningBridge, session: str = "tok", key: str = KEY) -> str:
    async with httpx.AsyncClient(base_url=bridge.url, headers={"x-api-key": key}) as http:
        resp = await http.post(f"/api/v1/sessions/{session}/token")
        assert resp.status_code == 200, resp.text
        token: str = resp.json()["token"]
        return token


async def _opens(bridge: RunningBridge, token: str, session: str = "tok") -> tuple[int, str]:
    """(0, "") if the socket says hello with `token`, else the close code and reason."""
    async with connect(f"{bridge.ws_url}/api/v1/sessions/{session}/ws?token={token}") as ws:
        try:
            event = await recv(ws)
        except ConnectionClosed as closed:
            assert closed.rcvd is not None
            return closed.rcvd.code, closed.rcvd.reason
    assert event["event"] == "hello"
    return 0, ""


async def test_token_signature_comes_from_the_secret_not_the_api_key_alone(
    start_bridge: StartBridge,
) -> None:
    bridge = start_bridge(env={"BRIDGE_API_KEY": KEY, "BRIDGE_TOKEN_SECRET": SECRET})
    token = await _mint(bridge)
    expected = hmac.new(SECRET.encode(), LABEL + KEY.encode(), hashlib.sha256).digest()
    assert jwt.decode(token, expected, algorithms=["HS256"])["sub"] == "tok"
    # The key alone, as before (one SHA-256 of it), no longer reproduces the signature.
    from_key_alone = hashlib.sha256(LABEL + KEY.encode()).digest()
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, from_key_alone, algorithms=["HS256"])


async def test_token_verifies_only_with_its_secret_and_api_key(start_bridge: StartBridge) -> None:
    """The store's secret survives a restart and is shared by every instance on the
    store; another store, another `BRIDGE_TOKEN_SECRET` or another API key refuses the
    token. Before: any bridge with the same API key accepted it."""
    first = start_bridge(store="sqlite", env={"BRIDGE_API_KEY": KEY})
    token = await _mint(first)
    assert await _opens(first, token) == (0, "")
    # A second instance on the same store accepts it...
    twin = start_bridge(store=first.store, env={"BRIDGE_API_KEY": KEY})
    assert await _opens(twin, token) == (0, "")
    twin.stop()
    # ...and so does the first after a restart: the secret is kept by the store.
    first.restart()
    assert await _opens(first, token) == (0, "")
    first.stop()
    # Same API key, another store (so another secret): refused.
    stranger = start_bridge(store="memory://", env={"BRIDGE_API_KEY": KEY})
    code, reason = await _opens(stranger, token)
    assert code == 1008 and "invalid" in reason
    # Same store, BRIDGE_TOKEN_SECRET set: that secret signs instead.
    pinned = start_bridge(
        store=first.store, env={"BRIDGE_API_KEY": KEY, "BRIDGE_TOKEN_SECRET": SECRET}
    )
    code, reason = await _opens(pinned, token)
    assert code == 1008 and "invalid" in reason
    pinned_token = await _mint(pinned)
    assert await _opens(pinned, pinned_token) == (0, "")
    pinned.stop()
    other_secret = start_bridge(
        store=first.store, env={"BRIDGE_API_KEY": KEY, "BRIDGE_TOKEN_SECRET": "t" * 40}
    )
    code, reason = await _opens(other_secret, pinned_token)
    assert code == 1008 and "invalid" in reason
    other_secret.stop()
    # Changing the API key voids every token.
    new_key = start_bridge(store=first.store, env={"BRIDGE_API_KEY": KEY + "-new"})
    code, reason = await _opens(new_key, token)
    assert code == 1008 and "invalid" in reason


@pytest.mark.parametrize("name", ["%74oken", "tok%65n", "%74%6F%6B%65%6E"])
async def test_token_with_an_encoded_parameter_name_is_redacted_in_the_log(
    start_bridge: StartBridge, name: str
) -> None:
    """`?%74oken=` authenticates (the query is decoded before it is read) but uvicorn logs
    the query as it came. Before: the log showed such a token in clear."""
    bridge = start_bridge(env={"BRIDGE_API_KEY": KEY})
    token = await _mint(bridge, "logged")
    url = f"{bridge.ws_url}/api/v1/sessions/logged/ws?after=0&{name}={token}"
    async with connect(url) as ws:
        assert (await recv(ws))["event"] == "hello"  # it did authenticate
    log = bridge.log_path.read_text()
    assert f"/api/v1/sessions/logged/ws?after=0&{name}=[redacted]" in log, log[-2000:]
    assert token not in log
