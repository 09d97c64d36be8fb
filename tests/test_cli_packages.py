"""The package rule and the extras: `bridge` (the server) imports nothing client-side and
runs without Streamlit; `streamlit_client` takes only `bridge.wire` from the server;
`bridge_cli` (the command line) is the one package that imports both; a command whose
extra is missing names it.

    bridge/            -> bridge.*, third-party server libraries
    streamlit_client/  -> streamlit_client.*, bridge.wire, httpx, websockets, (streamlit)
    bridge_cli/        -> all of the above
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.support import ROOT, bridge_env, free_port, stop_process, wait_until

CLIENT_SIDE = ("streamlit", "streamlit_client", "bridge_cli")
PAGE_EXTRA_HINT = "needs the page extra: pip install 'streamlit-bridge[page]'"


def _imports(path: Path) -> list[str]:
    """Every module `path` imports, at any depth (lazy imports in functions included)."""
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


def _top(name: str) -> str:
    return name.split(".")[0]


def test_the_server_package_imports_nothing_client_side() -> None:
    # bridge/__main__.py is the `python -m bridge` launcher of the whole command line,
    # never imported by `import bridge`: the one file allowed to reach bridge_cli.
    found = {
        f"{path.relative_to(ROOT)}: {name}"
        for path in sorted((ROOT / "bridge").rglob("*.py"))
        if path.name != "__main__.py"
        for name in _imports(path)
        if _top(name) in CLIENT_SIDE
    }
    assert not found, found
    assert _imports(ROOT / "bridge" / "__main__.py") == ["bridge_cli.cli"]


def test_clients_take_only_the_wire_from_the_server() -> None:
    found = {
        f"{path.relative_to(ROOT)}: {name}"
        for path in sorted((ROOT / "streamlit_client").rglob("*.py"))
        for name in _imports(path)
        if (_top(name) == "bridge" and name != "bridge.wire") or _top(name) == "bridge_cli"
    }
    assert not found, found


def test_importing_and_building_the_server_loads_no_client_module() -> None:
    code = (
        "import sys, bridge, bridge.app, bridge.server, bridge.cli, bridge.wire\n"
        "bridge.create_app(bridge.Settings(store='memory://'))\n"
        f"loaded = sorted(m for m in sys.modules if m.split('.')[0] in {CLIENT_SIDE!r})\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


def test_serve_loads_no_client_module() -> None:
    # `python -m bridge serve` goes through bridge_cli; `--help` stops after the parser,
    # so every import the command line itself makes for `serve` is in this log.
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "bridge", "serve", "--help"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    modules = [line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines()]
    assert "bridge_cli.cli" in modules
    assert not [m for m in modules if _top(m) in ("streamlit", "streamlit_client")]


def _without_streamlit(code: str) -> subprocess.CompletedProcess[str]:
    """Run `code` in an interpreter where `import streamlit` fails as if not installed
    (`tests/test_cli_packages.py::test_a_plain_install_*` checks a real install)."""
    hide = "import sys; sys.modules['streamlit'] = None\n"
    return subprocess.run(
        [sys.executable, "-c", hide + code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("command", ["chat", "up"])
def test_a_page_command_without_streamlit_names_the_extra(command: str) -> None:
    done = _without_streamlit(f"from bridge_cli.cli import main; sys.exit(main([{command!r}]))")
    assert done.returncode == 2, done.stderr
    assert f"streamlit-bridge {command} {PAGE_EXTRA_HINT}" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_page_function_without_streamlit_names_the_extra() -> None:
    done = _without_streamlit(
        "import streamlit_client\n"
        "try:\n    streamlit_client.chat\nexcept ModuleNotFoundError as exc:\n"
        "    print(exc)\nelse:\n    sys.exit('imported')\n"
    )
    assert done.returncode == 0, done.stderr
    assert f"streamlit_client.chat {PAGE_EXTRA_HINT}" in done.stdout


@pytest.mark.slow
def test_a_plain_install_brings_no_streamlit_and_serves(tmp_path: Path) -> None:
    """`pip install .` (no extras) into a fresh venv, dependencies resolved for real:
    no Streamlit; `serve` answers /healthz; `send` works; `chat` names the extra."""
    source = tmp_path / "source"  # a copy: building in the work tree would write into it
    for name in ("pyproject.toml", "README.md"):
        source.mkdir(exist_ok=True)
        shutil.copy(ROOT / name, source / name)
    for package in ("bridge", "streamlit_client", "bridge_cli"):
        shutil.copytree(
            ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python, cli = venv / "bin" / "python", str(venv / "bin" / "streamlit-bridge")
    installed = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         str(source)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stderr[-3000:]
    probe = "import importlib.util as u; print(u.find_spec('streamlit') is None)"
    no_streamlit = subprocess.run([str(python), "-c", probe], capture_output=True, text=True)
    assert no_streamlit.stdout.strip() == "True", no_streamlit

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = bridge_env()
    with (tmp_path / "serve.log").open("wb") as log:
        serve = subprocess.Popen(
            [cli, "serve", "--port", str(port), "--store", "memory://"],
            cwd=tmp_path, env=env, stdout=log, stderr=log,
        )  # fmt: skip

    def healthy() -> bool:
        if serve.poll() is not None:
            raise AssertionError((tmp_path / "serve.log").read_text()[-3000:])
        try:
            return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(healthy, 60, "serve from the plain install")
        sent = subprocess.run(
            [cli, "send", "plain", "hello", "--bridge", url],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert sent.returncode == 0 and '"content": "hello"' in sent.stdout, sent.stderr
        chat = subprocess.run(
            [cli, "chat", "--bridge", url], env=env, capture_output=True, text=True, timeout=60
        )
        assert chat.returncode == 2 and PAGE_EXTRA_HINT in chat.stderr, chat.stderr
    finally:
        stop_process(serve)
