"""bridge.ws without a server: the socket caps (`SocketLimits`). The route itself is
tested against a server in tests/test_websocket.py."""

from __future__ import annotations

import pytest

from bridge.errors import QuotaExceeded
from bridge.ws import SocketLimits


def test_sockets_are_capped_per_client_and_in_total() -> None:
    limits = SocketLimits(max_total=3, max_per_client=2)
    limits.admit("a")
    limits.admit("a")
    with pytest.raises(QuotaExceeded, match="BRIDGE_SOCKETS_PER_CLIENT_MAX"):
        limits.admit("a")
    limits.admit("b")
    with pytest.raises(QuotaExceeded, match="BRIDGE_SOCKETS_MAX"):
        limits.admit("c")
    assert limits.total == 3


def test_a_released_socket_makes_room_again() -> None:
    limits = SocketLimits(max_total=2, max_per_client=1)
    limits.admit("a")
    limits.release("a")
    limits.admit("a")  # room again for the same client
    limits.admit("b")
    limits.release("a")
    limits.release("b")
    assert limits.total == 0
    limits.admit("c")
    limits.admit("a")
    assert limits.total == 2


def test_a_refused_socket_is_not_counted() -> None:
    limits = SocketLimits(max_total=5, max_per_client=1)
    limits.admit("a")
    with pytest.raises(QuotaExceeded):
        limits.admit("a")
    limits.release("a")
    assert limits.total == 0
