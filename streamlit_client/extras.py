"""Which optional extra brings what: the chat page needs Streamlit, the `page` extra.

`pip install streamlit-bridge` installs the bridge and every client but the page;
`pip install 'streamlit-bridge[page]'` adds Streamlit. Whatever needs the page asks
`page_missing` first, so that a missing extra is named, not met as an ImportError.
"""

from __future__ import annotations

import importlib.util

__all__ = ["PAGE_EXTRA", "page_missing", "require_page"]

PAGE_EXTRA = "page"


def page_missing(what: str) -> str | None:
    """None if Streamlit can be imported; else the sentence telling how to get it for
    `what` (e.g. `streamlit-bridge chat`)."""
    if importlib.util.find_spec("streamlit") is not None:
        return None
    return f"{what} needs the {PAGE_EXTRA} extra: pip install 'streamlit-bridge[{PAGE_EXTRA}]'"


def require_page(what: str) -> None:
    """Raise `ModuleNotFoundError` naming the extra if Streamlit is not installed."""
    message = page_missing(what)
    if message is not None:
        raise ModuleNotFoundError(message, name="streamlit")
