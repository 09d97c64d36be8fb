"""Helpers for the Langflow component tests (tests/test_component_*.py).

Components are loaded the way Langflow loads them (from each file's source text), never by
importing `langflow_component` as a package.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent.parent
COMPONENTS_PATH = ROOT / "langflow_component"  # what LANGFLOW_COMPONENTS_PATH points at
COMPONENT_DIR = COMPONENTS_PATH / "streamlit_bridge"

# file stem -> component class name (also its unique Langflow `name`)
COMPONENTS = {
    "send": "StreamlitBridgeSend",
    "listen": "StreamlitBridgeListen",
    "chat_template": "StreamlitBridgeChatTemplate",
    "get_session_messages": "StreamlitBridgeGetSessionMessages",
    "get_last_session": "StreamlitBridgeGetLastSession",
    "stream": "StreamlitBridgeStream",
}

# lfx's own pydantic models emit these deprecation warnings on import; the suite turns
# warnings into errors, so every Langflow test module carries these filters.
LFX_WARNING_FILTERS = (
    "ignore::pydantic.warnings.PydanticDeprecationWarning",
)

_config_dir: str | None = None


def lfx_config_dir() -> str:
    """Point LANGFLOW_CONFIG_DIR at a throwaway folder (once per process) and return it.

    lfx writes a secret key file into its config folder; tests must not touch the user's.
    Call this before lfx is imported: lfx reads the variable when it first needs it.
    """
    global _config_dir
    if _config_dir is None:
        _config_dir = tempfile.mkdtemp(prefix="lfx-config-")
        atexit.register(shutil.rmtree, _config_dir, ignore_errors=True)
        os.environ["LANGFLOW_CONFIG_DIR"] = _config_dir
    return _config_dir


def component_source(stem: str) -> str:
    """The source text of one component file."""
    return (COMPONENT_DIR / f"{stem}.py").read_text(encoding="utf-8")


def component_class(stem: str) -> Any:
    """Build the component class from its file's source, exactly as Langflow rebuilds a node."""
    lfx_config_dir()
    from lfx.custom.eval import eval_custom_component_code

    return eval_custom_component_code(component_source(stem))


def make_component(stem: str, **params: Any) -> Any:
    """An instance of a component with its inputs set (its source attached, as in Langflow)."""
    cls = component_class(stem)
    return cls(_code=component_source(stem), **params)
