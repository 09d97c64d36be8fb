"""The listener: one `st.components.v2` component, no iframe, no build step.

Its JavaScript (`listener.js`) keeps one WebSocket per tab and sends Python one value at
a time under the state name `push`; Python answers through `data` (see
`streamlit_client.state` for the ack protocol). The data also carries the close-code table
of `bridge.wire` (`close_policy`), which the script follows: it has none of its own, and
the texts it draws that Python draws too (`labels`: the stopped marker under a reply cut
short by Stop, which shows in the script's bubble until Python's replaces it).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import streamlit as st

from bridge.wire import close_policy
from streamlit_client.render import STOPPED_MARKER

__all__ = ["COMPONENT_NAME", "mount_listener"]

COMPONENT_NAME = "streamlit_bridge_listener"
_HERE = Path(__file__).resolve().parent

if not hasattr(getattr(st, "components", None), "v2"):
    raise ImportError(
        f"streamlit {st.__version__} has no st.components.v2; the chat page needs a newer one"
    )

# Registered once at import, like a decorator; the renderer holds no per-session state.
_render = st.components.v2.component(
    COMPONENT_NAME,
    js=(_HERE / "listener.js").read_text(encoding="utf-8"),
    css=(_HERE / "chat.css").read_text(encoding="utf-8"),
    # Page-wide styles, and no shadow root: the status banner and stream bubbles sit in
    # the page like Streamlit's own elements.
    isolate_styles=False,
)


_CLOSE_POLICY = close_policy()
_LABELS = {"stopped": STOPPED_MARKER, "stop": "■ Stop", "stopping": "Stopping…"}


def mount_listener(key: str, data: dict[str, Any], on_push: Callable[[], None]) -> Any:
    """Mount the listener with `data`; `on_push` runs before the rerun a new value causes.

    Returns the latest value the component sent (or None).
    """
    result = _render(
        key=key,
        data={**data, "key": key, "close_policy": _CLOSE_POLICY, "labels": _LABELS},
        on_push_change=on_push,
    )
    return result.get("push")
