"""The chat page served by `streamlit-bridge chat` (`streamlit run` of this file).

Configured by `BRIDGE_*` environment variables (see `streamlit_client.config`). `chat()`
draws the title, the sidebar (New chat, this browser's chats, the connection and the
session id) and the chat itself.
"""

from __future__ import annotations

import streamlit as st

from streamlit_client.ui import chat

st.set_page_config(page_title="Chat", page_icon="💬")
chat()
