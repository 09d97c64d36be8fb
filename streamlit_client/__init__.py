"""The client side of streamlit-bridge: everything that talks to a bridge.

- `BridgeClient` / `Subscription`: the one client of the bridge's protocol (HTTP calls,
  the WebSocket with `after`, reconnects and close codes); no Streamlit;
- `Message`, `Template`, `Listened`: the wire shapes, declared in `bridge.wire`;
- `chat()` draws the live chat into any Streamlit page (needs the `page` extra; imported
  when used), with `listener.js` as its in-browser half;
- `python -m streamlit_client.demo_bot` answers user messages, streaming word by word;
- `streamlit_client.launcher.run_chat` serves the chat page (`streamlit run`).

Imports from the server package: `bridge.wire` only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from streamlit_client.client import BridgeClient, BridgeHTTPError
from streamlit_client.models import Listened, Message, Template
from streamlit_client.subscription import Subscription, SubscriptionClosed

if TYPE_CHECKING:
    from streamlit_client.ui import chat

__all__ = [
    "BridgeClient",
    "BridgeHTTPError",
    "Listened",
    "Message",
    "Subscription",
    "SubscriptionClosed",
    "Template",
    "chat",
]


def __getattr__(name: str) -> Any:
    # `chat` pulls in Streamlit: load it only when asked for, so that the client stays
    # usable (and fast to import) in programs without Streamlit. It lives in `ui`, not in
    # a module named `chat`, which would shadow the function once imported.
    if name == "chat":
        from streamlit_client.extras import require_page

        require_page("streamlit_client.chat")
        from streamlit_client.ui import chat

        return chat
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
