"""A saved flow run end to end by `lfx run` (Langflow's headless runner) against a real bridge.

The flow (Streamlit Listen -> Streamlit Send -> Chat Output) embeds the components' source as
a flow saved by Langflow does; `lfx run` rebuilds every node from it, offline.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import lfx  # noqa: F401  (the `langflow` extra: missing is a failure, never a skip)
import pytest

from tests.langflow_support import LFX_WARNING_FILTERS
from tests.langflow_support.flows import echo_flow
from tests.support import RunningBridge, free_port

pytestmark = [pytest.mark.langflow, *(pytest.mark.filterwarnings(f) for f in LFX_WARNING_FILTERS)]


def lfx_run(flow: dict[str, Any], tmp_path: Path) -> tuple[int, dict[str, Any], str]:
    """Run `python -m lfx run --format json <flow>`; returns exit code, result JSON, stderr."""
    flow_path = tmp_path / "flow.json"
    flow_path.write_text(json.dumps(flow), encoding="utf-8")
    config_dir = tmp_path / "lfx-config"
    config_dir.mkdir(exist_ok=True)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "LANGFLOW_CONFIG_DIR": str(config_dir)}
    proc = subprocess.run(
        [sys.executable, "-m", "lfx", "run", "--format", "json", str(flow_path), ""],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    try:
        result = json.loads(proc.stdout)
    except ValueError:
        pytest.fail(
            f"lfx run printed no JSON (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
    return proc.returncode, result, proc.stderr


def test_lfx_run_answers_a_typed_message(bridge: RunningBridge, tmp_path: Path) -> None:
    typed = httpx.post(
        f"{bridge.url}/api/v1/sessions/cli-tab/messages",
        json={"role": "user", "content": "ping from the tab"},
    ).json()

    code, result, stderr = lfx_run(echo_flow(bridge.url, timeout=30), tmp_path)

    assert code == 0 and result["success"] is True, (result, stderr)
    stored = json.loads(result["result"])  # Send's output: the stored message
    assert (stored["session_id"], stored["role"]) == ("cli-tab", "ai")
    assert stored["content"] == "ping from the tab"
    assert stored["seq"] == typed["seq"] + 1
    last = httpx.get(f"{bridge.url}/api/v1/sessions/cli-tab/messages", params={"limit": 1}).json()
    assert last == [stored]


def test_lfx_run_reports_an_unreachable_bridge_clearly(tmp_path: Path) -> None:
    port = free_port()
    code, result, _ = lfx_run(echo_flow(f"http://127.0.0.1:{port}"), tmp_path)

    assert result["success"] is False
    message = result["exception_message"]
    # Langflow's own framing, then the component's message: no httpx traceback.
    assert message.startswith("Error building Component Streamlit Listen: \n\nCannot reach the")
    assert f"Streamlit bridge at http://127.0.0.1:{port} (" in message
    assert "Is it running (streamlit-bridge serve)?" in message
    assert code == 1
