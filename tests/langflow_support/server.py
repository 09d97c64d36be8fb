"""A real Langflow 1.13 server for the tests in tests/test_langflow_*.py.

Langflow lives in its own venv (`.venv-langflow`, made by scripts/install-langflow.sh, which
`make test` runs first) so its hundreds of pins never touch the project's. The server is started
once per test session (`langflow run`, editor included) on a free port, with this repository's
`langflow_component` folder as LANGFLOW_COMPONENTS_PATH, auto-login, a throwaway database and
config folder, and everything that would reach the internet switched off.

Flows are made the way the editor stores them: a node is the component's template from
`GET /api/v1/all`, an edge carries its handles as JSON with `"` replaced by `œ`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.langflow_support import COMPONENTS_PATH
from tests.support import ROOT, free_port, wait_until

LANGFLOW_VENV = Path(os.environ.get("LANGFLOW_VENV", ROOT / ".venv-langflow"))
LANGFLOW_VERSION = "1.13.0"
INSTALL_SCRIPT = ROOT / "scripts" / "install-langflow.sh"
# Cold start measured at 70-80 s on a 2-core machine (imports, migrations, component index).
START_TIMEOUT = 300.0
# pytest-timeout for tests using the server: the first one is charged its start.
LANGFLOW_TEST_TIMEOUT = 420

CATEGORY = "streamlit_bridge"  # the folder under langflow_component/: the sidebar category


def langflow_executable() -> Path:
    return LANGFLOW_VENV / "bin" / "langflow"


def ensure_installed() -> str | None:
    """Install Langflow into its venv if needed; None when ready, else why it is not."""
    stamp = LANGFLOW_VENV / f".langflow-{LANGFLOW_VERSION}-stamp"
    if stamp.exists() and langflow_executable().exists():
        return None
    env = {**os.environ, "LANGFLOW_VENV": str(LANGFLOW_VENV), "LANGFLOW_VERSION": LANGFLOW_VERSION}
    try:
        proc = subprocess.run(
            ["bash", str(INSTALL_SCRIPT)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"could not install Langflow {LANGFLOW_VERSION} ({INSTALL_SCRIPT}): {exc}"
    if proc.returncode != 0 or not langflow_executable().exists():
        tail = (proc.stdout + proc.stderr)[-2000:]
        return f"could not install Langflow {LANGFLOW_VERSION} with {INSTALL_SCRIPT}:\n{tail}"
    return None


def langflow_env(workdir: Path) -> dict[str, str]:
    """The server's environment: ours minus LANGFLOW_*/BRIDGE_*, plus a sealed-off setup."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LANGFLOW_", "BRIDGE_")) and k not in ("VIRTUAL_ENV", "PYTHONPATH")
    }
    (workdir / "home").mkdir(exist_ok=True)
    env.update(
        {
            "HOME": str(workdir / "home"),
            "PATH": f"{LANGFLOW_VENV / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}",
            # The project's component folder; more folders would be separated by ':'.
            "LANGFLOW_COMPONENTS_PATH": str(COMPONENTS_PATH),
            "LANGFLOW_AUTO_LOGIN": "true",
            "LANGFLOW_DATABASE_URL": f"sqlite:///{workdir / 'langflow.db'}",
            "LANGFLOW_CONFIG_DIR": str(workdir / "config"),
            "LANGFLOW_LOG_FILE": str(workdir / "langflow-file.log"),
            "LANGFLOW_LOG_LEVEL": "info",
            # Plain log lines: a failing run renders its traceback much faster than with rich.
            "LANGFLOW_PRETTY_LOGS": "false",
            "LANGFLOW_TELEMETRY_WRITER_OUTBOX_DIR": str(workdir / "outbox"),
            # Nothing may leave the machine: no telemetry, store, update or catalog fetches, no
            # MCP helpers; starter projects are not needed either.
            "LANGFLOW_DO_NOT_TRACK": "true",
            "DO_NOT_TRACK": "true",
            "LANGFLOW_STORE": "false",
            "LANGFLOW_MODELS_DEV_REFRESH": "false",
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "LANGFLOW_CREATE_STARTER_PROJECTS": "false",
            "LANGFLOW_UPDATE_STARTER_PROJECTS": "false",
            "LANGFLOW_SKIP_MCP_AUTO_INIT": "true",
            "LANGFLOW_ADD_PROJECTS_TO_MCP_SERVERS": "false",
            "LANGFLOW_MCP_COMPOSER_ENABLED": "false",
            "LANGFLOW_OPEN_BROWSER": "false",
            # Anything that still tries the internet (e.g. the version check printed in the
            # start banner) fails at once against a closed local port instead of waiting.
            "HTTP_PROXY": "http://127.0.0.1:9",
            "HTTPS_PROXY": "http://127.0.0.1:9",
            "http_proxy": "http://127.0.0.1:9",
            "https_proxy": "http://127.0.0.1:9",
            "NO_PROXY": "127.0.0.1,localhost,::1",
            "no_proxy": "127.0.0.1,localhost,::1",
        }
    )
    return env


def handle(value: dict[str, Any]) -> str:
    """An edge handle as the editor stores it: compact JSON with `"` replaced by `œ`."""
    return json.dumps(value).replace('"', "œ")


@dataclass
class Node:
    """A flow node: its id, its component type and its template (inputs and outputs)."""

    id: str
    type: str
    template: dict[str, Any]
    position: tuple[float, float] = (0.0, 0.0)

    def output(self, name: str) -> dict[str, Any]:
        return next(o for o in self.template["outputs"] if o["name"] == name)

    def as_json(self) -> dict[str, Any]:
        x, y = self.position
        return {
            "id": self.id,
            "type": "genericNode",
            "position": {"x": x, "y": y},
            "data": {"id": self.id, "type": self.type, "node": self.template},
        }


def edge(source: Node, output: str, target: Node, field_name: str) -> dict[str, Any]:
    """An edge from `source`'s output to `target`'s input, with the editor's handle format."""
    out = source.output(output)
    field_spec = target.template["template"][field_name]
    source_handle = {
        "dataType": source.type,
        "id": source.id,
        "name": output,
        "output_types": out["types"],
    }
    target_handle = {
        "fieldName": field_name,
        "id": target.id,
        "inputTypes": field_spec.get("input_types"),
        "type": field_spec["type"],
    }
    return {
        "id": f"reactflow__edge-{source.id}{handle(source_handle)}-{target.id}"
        f"{handle(target_handle)}",
        "source": source.id,
        "target": target.id,
        "sourceHandle": handle(source_handle),
        "targetHandle": handle(target_handle),
        "data": {"sourceHandle": source_handle, "targetHandle": target_handle},
    }


@dataclass
class RunningLangflow:
    """`langflow run` on a free port, with its REST API at hand."""

    workdir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    token: str = ""
    api_key: str = ""
    startup_seconds: float = 0.0
    _catalog: dict[str, Any] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        """The server's console output (start-up progress, crashes)."""
        return self.workdir / "langflow.log"

    @property
    def log_file(self) -> Path:
        """Langflow's own log (LANGFLOW_LOG_FILE): one JSON object per line."""
        return self.workdir / "langflow-file.log"

    def log_offset(self) -> int:
        return self.log_file.stat().st_size if self.log_file.exists() else 0

    def errors_since(self, offset: int) -> list[str]:
        """The error-level lines Langflow logged after `offset` (see log_offset)."""
        if not self.log_file.exists():
            return []
        with self.log_file.open("rb") as log:
            log.seek(offset)
            text = log.read().decode("utf-8", errors="replace")
        return [line for line in text.splitlines() if '"level": "error"' in line]

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    # ----------------------------------------------------------------------------- process

    def start(self, timeout: float = START_TIMEOUT) -> RunningLangflow:
        started = time.monotonic()
        cmd = [
            str(langflow_executable()),
            "run",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
            "--no-open-browser",
        ]
        with self.log_path.open("ab") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                cmd,
                cwd=self.workdir,
                env=langflow_env(self.workdir),
                stdout=log,
                stderr=log,
                start_new_session=True,  # its own process group: stop() ends its workers too
            )
        wait_until(self._healthy, timeout, f"Langflow on port {self.port} (log: {self.log_path})")
        self.startup_seconds = time.monotonic() - started
        self.token = self._login()
        self.api_key = self.create_api_key("streamlit-bridge tests")
        return self

    def _healthy(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(
                f"langflow exited with {self.proc.returncode}:\n{self.log_text()[-3000:]}"
            )
        try:
            return httpx.get(f"{self.url}/health", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        """SIGTERM the process group we started (server and its worker), SIGKILL after 20 s."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        pgid = proc.pid  # start_new_session: the group id is the id of the process we started
        try:
            os.killpg(pgid, signal.SIGTERM)
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(pgid, signal.SIGKILL)
            proc.wait(timeout=10)
        except ProcessLookupError:
            pass

    # ------------------------------------------------------------------------------- REST

    def _login(self) -> str:
        response = httpx.get(f"{self.url}/api/v1/auto_login", timeout=30)
        response.raise_for_status()
        return str(response.json()["access_token"])

    @property
    def auth(self) -> dict[str, str]:
        """The editor's credentials (a bearer token from auto-login)."""
        return {"Authorization": f"Bearer {self.token}"}

    def create_api_key(self, name: str) -> str:
        response = httpx.post(
            f"{self.url}/api/v1/api_key/", json={"name": name}, headers=self.auth, timeout=30
        )
        response.raise_for_status()
        return str(response.json()["api_key"])

    def catalog(self) -> dict[str, Any]:
        """`GET /api/v1/all`: every component template the server loaded, by category."""
        if self._catalog is None:
            response = httpx.get(f"{self.url}/api/v1/all", headers=self.auth, timeout=120)
            response.raise_for_status()
            self._catalog = response.json()
        return self._catalog

    def component_key(self, class_name: str) -> str:
        """The key under which the loader lists one of our components."""
        return f"ext:{CATEGORY}:{class_name}@extra"

    def template(self, class_name: str, category: str = CATEGORY) -> dict[str, Any]:
        """A fresh copy of a component's template, ours (by class) or built in (by key)."""
        entries = self.catalog()[category]
        key = self.component_key(class_name) if category == CATEGORY else class_name
        return json.loads(json.dumps(entries[key]))

    def node(
        self,
        class_name: str,
        category: str = CATEGORY,
        position: tuple[float, float] = (0.0, 0.0),
        **values: Any,
    ) -> Node:
        """A node of a loaded component with some input values set."""
        template = self.template(class_name, category)
        for name, value in values.items():
            assert name in template["template"], f"{class_name} has no input {name!r}"
            template["template"][name]["value"] = value
        node_id = f"{class_name}-{uuid.uuid4().hex[:5]}"
        return Node(id=node_id, type=class_name, template=template, position=position)

    def node_from_code(self, code: str, position: tuple[float, float] = (0.0, 0.0)) -> Node:
        """A node of a custom component given as source, built by the server as the editor does."""
        response = httpx.post(
            f"{self.url}/api/v1/custom_component",
            json={"code": code},
            headers=self.auth,
            timeout=60,
        )
        response.raise_for_status()
        body = response.json()
        node_type = body["type"]
        return Node(
            id=f"{node_type}-{uuid.uuid4().hex[:5]}",
            type=node_type,
            template=body["data"],
            position=position,
        )

    def prompt_node(self, text: str, position: tuple[float, float] = (0.0, 0.0)) -> Node:
        """A Prompt Template with `text`; its {variables} become inputs, as in the editor."""
        node = self.node("Prompt Template", "models_and_agents", position)
        response = httpx.post(
            f"{self.url}/api/v1/validate/prompt",
            json={"name": "template", "template": text, "frontend_node": node.template},
            headers=self.auth,
            timeout=60,
        )
        response.raise_for_status()
        node.template = response.json()["frontend_node"]
        node.template["template"]["template"]["value"] = text
        return node

    def create_variable(self, name: str, value: str) -> None:
        """A Langflow global variable (a Credential), as Settings > Global Variables makes one."""
        response = httpx.post(
            f"{self.url}/api/v1/variables/",
            json={"name": name, "value": value, "type": "Credential", "default_fields": []},
            headers=self.auth,
            timeout=30,
        )
        assert response.status_code == 201, response.text

    def create_flow(
        self, name: str, nodes: list[Node], edges: list[dict[str, Any]] | None = None
    ) -> str:
        body = {
            "name": f"{name} {uuid.uuid4().hex[:6]}",
            "data": {
                "nodes": [n.as_json() for n in nodes],
                "edges": edges or [],
                "viewport": {"x": 0, "y": 0, "zoom": 1},
            },
        }
        response = httpx.post(f"{self.url}/api/v1/flows/", json=body, headers=self.auth, timeout=30)
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    def get_flow(self, flow_id: str) -> dict[str, Any]:
        response = httpx.get(f"{self.url}/api/v1/flows/{flow_id}", headers=self.auth, timeout=30)
        response.raise_for_status()
        return dict(response.json())

    def run(
        self,
        flow_id: str,
        *,
        api_key: str | None = None,
        timeout: float = 90.0,
        **body: Any,
    ) -> httpx.Response:
        """`POST /api/v1/run/<flow>` as an API client does (x-api-key), body as given."""
        key = self.api_key if api_key is None else api_key
        headers = {"x-api-key": key} if key else {}
        return httpx.post(
            f"{self.url}/api/v1/run/{flow_id}",
            json={"input_value": "", **body},
            headers=headers,
            timeout=timeout,
        )


def component_results(run_answer: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The per-component results of a run answered with `output_type: "debug"`, by name."""
    results: dict[str, dict[str, Any]] = {}
    for run_output in run_answer.get("outputs", []):
        for result in run_output.get("outputs", []):
            if result:
                results[result["component_display_name"]] = result
    return results


def start_langflow() -> RunningLangflow:
    """Start the server in a fresh temporary folder."""
    workdir = Path(tempfile.mkdtemp(prefix="langflow-test-"))
    running = RunningLangflow(workdir=workdir)
    try:
        running.start()
    except BaseException:
        running.stop()
        raise
    (workdir / "server.json").write_text(
        json.dumps({"port": running.port, "pid": running.proc.pid if running.proc else None})
    )
    return running


def attach_langflow(workdir: Path) -> RunningLangflow:
    """A server started earlier by `python -m tests.langflow_support.server` (kept running)."""
    info = json.loads((workdir / "server.json").read_text())
    running = RunningLangflow(workdir=workdir, port=int(info["port"]))
    wait_until(running._healthy, 10, f"Langflow on port {running.port}")
    running.token = running._login()
    running.api_key = running.create_api_key("streamlit-bridge tests")
    return running


def remove_workdir(running: RunningLangflow) -> None:
    shutil.rmtree(running.workdir, ignore_errors=True)


if __name__ == "__main__":
    # For working on the tests: start a server and leave it running; then
    #   STREAMLIT_BRIDGE_LANGFLOW_DIR=<printed folder> pytest tests/test_langflow_*.py
    # reuses it (its components are those loaded when it started). Stop it with
    #   kill -TERM -<pid>
    server = start_langflow()
    print(f"{server.workdir} pid {server.proc.pid if server.proc else '?'} {server.url}")
