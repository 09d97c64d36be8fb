"""The chat page served by `streamlit-bridge chat` (`streamlit run` of this file).

Configured by `BRIDGE_*` environment variables (see `streamlit_client.config`).
"""

from __future__ import annotations

import streamlit as st

from streamlit_client.ui import chat

st.set_page_config(page_title="Chat", page_icon="💬")
header = st.container()
session_id = chat()
header.caption(f"Session `{session_id}` · open this URL in another tab to join the chat")
