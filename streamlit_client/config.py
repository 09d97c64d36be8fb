"""Settings of the chat page, read from `BRIDGE_*` environment variables.

| variable | meaning | default |
|---|---|---|
| `BRIDGE_URL` | the bridge as the Streamlit server reaches it | `http://127.0.0.1:7881` |
| `BRIDGE_BROWSER_URL` | the bridge as the user's browser reaches it (WebSocket) | `BRIDGE_URL` |
| `BRIDGE_API_KEY` | sent as `x-api-key`; the page then mints a session token per tab | none |
| `BRIDGE_CHAT_HISTORY` | messages drawn in full; older ones are collapsed | `50` |

`streamlit_client.launcher.run_chat` sets them for the `streamlit run` subprocess.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from streamlit_client.client import DEFAULT_BRIDGE_URL

__all__ = ["ChatConfig"]


@dataclass(frozen=True, slots=True)
class ChatConfig:
    """Where the bridge is and how the chat is drawn."""

    bridge_url: str = DEFAULT_BRIDGE_URL
    browser_bridge_url: str | None = None
    api_key: str | None = None
    history_limit: int = 50

    @property
    def browser_url(self) -> str:
        """The bridge's URL for the browser (the server's URL unless told otherwise)."""
        return (self.browser_bridge_url or self.bridge_url).rstrip("/")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ChatConfig:
        """Build from `BRIDGE_*` variables of `env` (default: `os.environ`)."""
        env = os.environ if env is None else env
        limit = env.get("BRIDGE_CHAT_HISTORY", "")
        return cls(
            bridge_url=(env.get("BRIDGE_URL") or DEFAULT_BRIDGE_URL).rstrip("/"),
            browser_bridge_url=env.get("BRIDGE_BROWSER_URL") or None,
            api_key=env.get("BRIDGE_API_KEY") or None,
            history_limit=max(0, int(limit)) if limit.strip() else 50,
        )

    def to_env(self) -> dict[str, str]:
        """The variables that reproduce this config in a subprocess."""
        env = {
            "BRIDGE_URL": self.bridge_url,
            "BRIDGE_BROWSER_URL": self.browser_url,
            "BRIDGE_CHAT_HISTORY": str(self.history_limit),
        }
        if self.api_key:
            env["BRIDGE_API_KEY"] = self.api_key
        return env
