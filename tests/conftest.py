"""Fixtures: bridges on free ports, as real processes (tests/support.py) or served in
the test process (tests/inprocess.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.inprocess import InProcessBridge
from tests.support import RunningBridge, bridge_env, free_port

StartBridge = Callable[..., RunningBridge]
StartApp = Callable[..., InProcessBridge]


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


@pytest.fixture
def start_app(tmp_path: Path) -> Iterator[StartApp]:
    """Start bridges served in this process (the same server, in a thread of its own);
    all are shut down when the test ends.

    `start_app(store="memory://", env={"BRIDGE_...": ...})`; a `store` of `"sqlite"`
    means a fresh SQLite file in the test's temp folder. For tests that need a server but
    not a process: use `start_bridge` where the process matters (kill -9, SIGTERM,
    restarts, its memory or file descriptors, its log)."""
    started: list[InProcessBridge] = []

    def start(store: str = "memory://", env: dict[str, str] | None = None) -> InProcessBridge:
        if store == "sqlite":
            store = f"sqlite:///{tmp_path / f'app-{len(started)}.db'}"
        app = InProcessBridge(store=store, env=dict(env or {}))
        started.append(app)
        return app.start()

    yield start
    for app in started:
        app.stop()


@pytest.fixture
def app_bridge(start_app: StartApp) -> InProcessBridge:
    """One bridge served in this process, with the in-memory store."""
    return start_app()


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under `make test` (pytest-xdist, `--dist loadgroup`), tests that share one server or
    change a global resource run on one worker: the Langflow server is started once per
    worker that needs it, and some Redis tests change the shared Redis (maxmemory)."""
    for item in items:
        if "langflow" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("langflow-server"))
        elif item.get_closest_marker("redis") is not None or "redis" in item.nodeid.lower():
            item.add_marker(pytest.mark.xdist_group("redis"))
