"""The Streamlit side of streamlit-bridge.

- `chat()` draws the live chat into any Streamlit page (imports Streamlit when used);
- `BridgeClient` / `Subscription` talk to the bridge from plain Python (no Streamlit);
- `python -m streamlit_client.demo_bot` answers user messages, streaming word by word;
- `streamlit_client.launcher.run_chat` serves the chat page (`streamlit run`).
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
        from streamlit_client.ui import chat

        return chat
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
