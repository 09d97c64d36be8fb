"""Pytest plugin with the real Langflow server fixture (tests/test_langflow_*.py load it with
`pytest_plugins = ["tests.langflow_support.fixtures"]`, so it is defined once per session).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.langflow_support.server import (
    LANGFLOW_VERSION,
    RunningLangflow,
    attach_langflow,
    ensure_installed,
    remove_workdir,
    start_langflow,
)


@pytest.fixture(scope="session")
def langflow(request: pytest.FixtureRequest) -> Iterator[RunningLangflow]:
    """One real `langflow run` (editor included) for the whole test session.

    Installs Langflow into .venv-langflow first if needed (scripts/install-langflow.sh; `make
    test` does that before pytest). Skips only when it cannot be installed.
    """
    attach = os.environ.get("STREAMLIT_BRIDGE_LANGFLOW_DIR")
    if attach:  # a server left running by `python -m tests.langflow_support.server`
        yield attach_langflow(Path(attach))
        return
    reason = ensure_installed()
    if reason is not None:
        pytest.skip(f"Langflow {LANGFLOW_VERSION} is not available: {reason}")
    running = start_langflow()
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(
            f"\nLangflow {LANGFLOW_VERSION} answered /health after {running.startup_seconds:.0f} s "
            f"on {running.url} (log: {running.log_path})"
        )
    yield running
    running.stop()
    if not request.session.testsfailed:
        remove_workdir(running)  # kept after a failure: the log is in there
