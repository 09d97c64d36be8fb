"""Fixtures: real bridge processes on free ports (see tests/support.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support import RunningBridge, bridge_env, free_port

StartBridge = Callable[..., RunningBridge]


@pytest.fixture
def start_bridge(tmp_path: Path) -> Iterator[StartBridge]:
    """Start real bridge processes; all are stopped when the test ends.

    `start_bridge(store="memory://", env={...}, args=[...], port=None)`; a `store` of
    `"sqlite"` means a fresh SQLite file in the test's temp folder.
    """
    started: list[RunningBridge] = []

    def start(
        store: str = "memory://",
        env: dict[str, str] | None = None,
        args: list[str] | None = None,
        port: int | None = None,
    ) -> RunningBridge:
        if store == "sqlite":
            store = f"sqlite:///{tmp_path / 'bridge.db'}"
        running = RunningBridge(
            port=port or free_port(),
            store=store,
            env=bridge_env(**(env or {})),
            log_path=tmp_path / f"bridge-{len(started)}.log",
            extra_args=list(args or []),
        )
        started.append(running)
        return running.start()

    yield start
    for running in started:
        running.stop()


@pytest.fixture
def bridge(start_bridge: StartBridge) -> RunningBridge:
    """One real bridge with the in-memory store."""
    return start_bridge()
