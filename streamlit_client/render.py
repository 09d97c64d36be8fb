"""Drawing messages with Streamlit: chat bubbles, collapsed history, the typing effect.

Each message's content is drawn inside a container keyed `message_key(message)`, which
Streamlit gives the CSS class `st-key-<key>`: `listener.js` draws every pushed message and
stream itself the moment it arrives, and hides its own bubble as soon as an element with
that class is in the page. A keyed container is drawn only once it has content, so the
class appears together with the text, never before it.

Image messages: `st.image` opens local files when given a string that names one (an SVG
path comes back as its text in a data URI, `/dev/zero` is read until memory runs out).
The bridge refuses such content for new messages, but history may come from an older
bridge or a store written by something else, so the page checks again, with the
bridge's own rule (`bridge.wire.check_image_content`), and shows anything else as text.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager

import streamlit as st
from streamlit.errors import StreamlitDuplicateElementKey

from bridge.wire import check_image_content
from streamlit_client.models import Message, Template

__all__ = [
    "IMAGE_REFUSED_NOTE",
    "STOPPED_MARKER",
    "displayable_image",
    "draw_history",
    "draw_message",
    "mark_prefix",
    "message_key",
    "shown_content",
]

IMAGE_REFUSED_NOTE = "image not shown: only http(s) and data:image URLs are displayed"
STOPPED_MARKER = "■ stopped"
"""Under a reply cut short by Stop (`message.stopped`); `listener.js` draws the same text
(it gets it in its component data) in the bubble that waits for Python's."""
_REFUSED_SHOWN_MAX = 500  # characters of refused image content shown as text


def mark_prefix(session_id: str) -> str:
    """The part of `message_key` that names the session: hex, so a valid CSS class."""
    return "sbm-" + hashlib.sha256(session_id.encode("utf-8")).hexdigest()[:12]


def message_key(message: Message) -> str:
    """The key of the container holding `message`'s content; `listener.js` builds the same
    (`<mark_prefix>-<seq>`, with the prefix it gets in its component data)."""
    return f"{mark_prefix(message.session_id)}-{message.seq}"


def _keyed(message: Message) -> AbstractContextManager[object]:
    try:
        return st.container(key=message_key(message))
    except StreamlitDuplicateElementKey:
        # The same message twice in one run (one session in two chats on a page): the
        # second copy goes without the key; the listener's bubble goes at the ack instead.
        return st.container()


def shown_content(message: Message, template: Template, welcome_seq: int | None) -> str:
    """The text to show: the welcome message follows the template in force."""
    if message.seq == welcome_seq and template.welcome_msg:
        return template.welcome_msg
    return message.content


def displayable_image(content: object) -> str | None:
    """`content` if the page may hand it to `st.image`, else None.

    Only a `str` that `check_image_content` accepts (an http(s) URL or a base64
    `data:image/...` URI), and that does not also name an existing path: Streamlit tries
    `os.path.isfile` before it looks at the scheme, so `https:/x/y.png` relative to the
    page's working directory would still be opened.
    """
    if not isinstance(content, str):  # bytes, paths, arrays: Streamlit would read them
        return None
    try:
        check_image_content(content)
    except ValueError:
        return None
    if os.path.lexists(content):
        return None
    return content


def draw_message(
    message: Message,
    template: Template,
    *,
    welcome_seq: int | None = None,
    typed: bool = False,
) -> None:
    """One `st.chat_message`; `typed` writes it word by word at the template's speed.

    A reply cut short by Stop carries the stopped marker under its text."""
    content = shown_content(message, template, welcome_seq)
    with st.chat_message(message.role, avatar=template.avatar(message.role)), _keyed(message):
        if message.type == "image":
            _draw_image(content)
        elif typed and template.write_speed > 0:
            st.write_stream(_words(content, template.write_speed))
        else:
            st.markdown(content)
        if message.stopped:
            st.caption(STOPPED_MARKER)


def _draw_image(content: str) -> None:
    url = displayable_image(content)
    if url is not None:
        st.image(url)
        return
    # Plain text, never markdown: the content is not opened, fetched or interpreted.
    shown = content if len(content) <= _REFUSED_SHOWN_MAX else content[:_REFUSED_SHOWN_MAX] + "…"
    st.text(shown)
    st.caption(IMAGE_REFUSED_NOTE)


def draw_history(
    messages: Sequence[Message],
    template: Template,
    limit: int,
    welcome_seq: int | None = None,
    *,
    unloaded: int = 0,
) -> None:
    """Draw the last `limit` messages in full and everything older as one collapsed block.

    One element for all older messages keeps reruns cheap however long the chat gets.
    `unloaded` counts messages older still, which were not even fetched.
    """
    cut = max(0, len(messages) - limit)
    if cut or unloaded:
        with st.expander(f"{cut + unloaded} earlier messages"):
            if unloaded:
                st.caption(f"The {unloaded} oldest are not shown.")
            lines = (_one_line(m, template, welcome_seq) for m in messages[:cut])
            st.markdown("\n\n".join(lines))
    for message in messages[cut:]:
        draw_message(message, template, welcome_seq=welcome_seq)


def _one_line(message: Message, template: Template, welcome_seq: int | None) -> str:
    who = template.avatar(message.role) or message.role
    stopped = f" *({STOPPED_MARKER})*" if message.stopped else ""
    return f"**{who}** {shown_content(message, template, welcome_seq)}{stopped}"


def _words(text: str, delay: float) -> Iterator[str]:
    # Pacing for the typing effect, not synchronisation: a rerun interrupts it safely.
    for index, word in enumerate(text.split(" ")):
        if index:
            time.sleep(delay)
        yield word if index == 0 else " " + word
