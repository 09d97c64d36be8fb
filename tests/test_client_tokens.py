"""`BridgeClient.subscribe` with an API key: tokens minted as needed, again on expiry."""

from __future__ import annotations

import time

from streamlit_client.client import BridgeClient
from streamlit_client.subscription import Subscription, SubscriptionClosed
from tests.support import RunningBridge, wait_until
from tests.test_client import Collector

KEY = "client-token-test-key-" + "k" * 24


def test_a_subscription_outlives_its_tokens(start_bridge) -> None:  # type: ignore[no-untyped-def]
    ttl = 2
    bridge: RunningBridge = start_bridge(
        env={"BRIDGE_API_KEY": KEY, "BRIDGE_TOKEN_TTL_S": str(ttl)}
    )
    with BridgeClient(bridge.url, api_key=KEY) as api:
        api.create_session("tok")
        started = time.monotonic()
        collector = Collector(api.subscribe("tok", after=1))
        try:
            wait_until(lambda: api.session_info("tok")["subscribers"] == 1, 10, "subscribed")
            api.post_message("tok", "ai", "one")
            collector.wait_for(lambda: collector.seqs() == [2], "the first message")
            # Past the first token's expiry the bridge closes the socket with 1008;
            # the subscription mints a new token and resumes after seq 2.
            wait_until(lambda: time.monotonic() > started + ttl + 1, ttl + 10, "expiry")
            api.post_message("tok", "ai", "two")
            collector.wait_for(lambda: collector.seqs() == [2, 3], "the second message")
            assert collector.error is None
        finally:
            collector.close()


def test_a_fixed_token_still_stops_at_its_expiry(start_bridge) -> None:  # type: ignore[no-untyped-def]
    bridge: RunningBridge = start_bridge(env={"BRIDGE_API_KEY": KEY, "BRIDGE_TOKEN_TTL_S": "1"})
    with BridgeClient(bridge.url, api_key=KEY) as api:
        api.create_session("fixed")
        token = api.session_token("fixed")
        subscription = Subscription(bridge.ws_url, "fixed", after=1, token=token)
        collector = Collector(subscription)
        try:
            collector.wait_for(lambda: collector.error is not None, "the subscription to end")
        finally:
            collector.close()
    assert isinstance(collector.error, SubscriptionClosed)
    assert "expired" in str(collector.error)
    assert collector.seqs() == []
