"""The listener: one `st.components.v2` component, no iframe, no build step.

Its JavaScript (`listener.js`) keeps one WebSocket per tab and sends Python one value at
a time under the state name `push`; Python answers through `data` (see
`streamlit_client.state` for the ack protocol). The data also carries the close-code table
of `bridge.wire` (`close_policy`), which the script follows: it has none of its own; the
texts it draws that Python draws too (`labels`: the stopped marker under a reply cut
short by Stop, the note under a refused image); and `mark_prefix`, from which the script
knows the key of the element Python draws for each message (`render.message_key`).

The script draws replies as markdown with the renderer and sanitiser vendored in
`vendor/` (marked and DOMPurify, browser builds from npm, see `vendor/README.md`): they are
put in front of `listener.js` in the one module the component loads, as `SB_VENDOR`, so
the page needs no network and no build. Streamlit loads the module once per tab (a blob
URL per distinct script).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import streamlit as st

from bridge.wire import close_policy
from streamlit_client.render import IMAGE_REFUSED_NOTE, STOPPED_MARKER, mark_prefix

__all__ = ["COMPONENT_NAME", "VENDOR_FILES", "listener_module", "mount_listener"]

COMPONENT_NAME = "streamlit_bridge_listener"
_HERE = Path(__file__).resolve().parent
VENDOR_FILES = {"marked": "vendor/marked.umd.js", "DOMPurify": "vendor/purify.min.js"}
"""The browser builds `listener.js` runs with, by the name it knows them by."""

if not hasattr(getattr(st, "components", None), "v2"):
    raise ImportError(
        f"streamlit {st.__version__} has no st.components.v2; the chat page needs a newer one"
    )


def _umd(path: Path) -> str:
    """A UMD build as an expression: its exports, without touching the page's globals."""
    source = path.read_text(encoding="utf-8")
    # The source map is not shipped; a comment pointing at it would only make devtools ask.
    source = re.sub(r"^//# sourceMappingURL=.*$", "", source, flags=re.MULTILINE)
    return (
        "(() => { const module = { exports: {} }; const exports = module.exports;\n"
        f"{source}\n"
        "return module.exports; })()"
    )


def listener_module() -> str:
    """The component's JavaScript: the vendored builds as `SB_VENDOR`, then `listener.js`."""
    vendor = ",\n".join(f"{name}: {_umd(_HERE / path)}" for name, path in VENDOR_FILES.items())
    listener = (_HERE / "listener.js").read_text(encoding="utf-8")
    return f"const SB_VENDOR = Object.freeze({{\n{vendor}\n}});\n{listener}"


# Registered once at import, like a decorator; the renderer holds no per-session state.
_render = st.components.v2.component(
    COMPONENT_NAME,
    js=listener_module(),
    css=(_HERE / "chat.css").read_text(encoding="utf-8"),
    # Page-wide styles, and no shadow root: the status banner and stream bubbles sit in
    # the page like Streamlit's own elements.
    isolate_styles=False,
)


_CLOSE_POLICY = close_policy()
_LABELS = {
    "stopped": STOPPED_MARKER,
    "stop": "■ Stop",
    "stopping": "Stopping…",
    "image_refused": IMAGE_REFUSED_NOTE,
}


def mount_listener(key: str, data: dict[str, Any], on_push: Callable[[], None]) -> Any:
    """Mount the listener with `data`; `on_push` runs before the rerun a new value causes.

    Returns the latest value the component sent (or None).
    """
    result = _render(
        key=key,
        data={
            **data,
            "key": key,
            "close_policy": _CLOSE_POLICY,
            "labels": _LABELS,
            "mark_prefix": mark_prefix(str(data.get("session_id") or "")),
        },
        on_push_change=on_push,
    )
    return result.get("push")
