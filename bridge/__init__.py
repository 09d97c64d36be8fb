"""streamlit-bridge: the real-time link between Langflow flows and Streamlit chat pages.

This package is the server. It imports nothing of the client side (`streamlit_client`,
`bridge_cli`, Streamlit); clients import only `bridge.wire` from it, which is why
`create_app` and `Settings` are loaded on first use rather than with the package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bridge.app import create_app
    from bridge.settings import Settings

__all__ = ["Settings", "create_app"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # `import bridge.wire` (what a client does) must not load FastAPI and the server.
    if name == "create_app":
        from bridge.app import create_app

        return create_app
    if name == "Settings":
        from bridge.settings import Settings

        return Settings
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
