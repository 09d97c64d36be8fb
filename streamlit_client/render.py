"""Drawing messages with Streamlit: chat bubbles, collapsed history, the typing effect."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence

import streamlit as st

from streamlit_client.models import Message, Template

__all__ = ["draw_history", "draw_message", "shown_content"]


def shown_content(message: Message, template: Template, welcome_seq: int | None) -> str:
    """The text to show: the welcome message follows the template in force."""
    if message.seq == welcome_seq and template.welcome_msg:
        return template.welcome_msg
    return message.content


def draw_message(
    message: Message,
    template: Template,
    *,
    welcome_seq: int | None = None,
    typed: bool = False,
) -> None:
    """One `st.chat_message`; `typed` writes it word by word at the template's speed."""
    content = shown_content(message, template, welcome_seq)
    with st.chat_message(message.role, avatar=template.avatar(message.role)):
        if message.type == "image":
            st.image(content)
        elif typed and template.write_speed > 0:
            st.write_stream(_words(content, template.write_speed))
        else:
            st.markdown(content)


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
    return f"**{who}** {shown_content(message, template, welcome_seq)}"


def _words(text: str, delay: float) -> Iterator[str]:
    # Pacing for the typing effect, not synchronisation: a rerun interrupts it safely.
    for index, word in enumerate(text.split(" ")):
        if index:
            time.sleep(delay)
        yield word if index == 0 else " " + word
