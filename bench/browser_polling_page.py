"""Reference page for `python -m bench.browser`: polls the way the original page did.

The original generated Streamlit page slept 2 s, re-ran itself and re-read the whole
history; this one does the same, reading the history from the bridge over HTTP.
"""

from __future__ import annotations

import os
import time

import httpx
import streamlit as st

BRIDGE = os.environ.get("BRIDGE_URL", "http://127.0.0.1:7881")
session_id = st.query_params.get("session", "bench")

messages = httpx.get(
    f"{BRIDGE}/api/v1/sessions/{session_id}/messages", params={"limit": 0}, timeout=10,
).json() or []
for message in messages:
    with st.chat_message(message["role"]):
        st.markdown(message["content"])

if prompt := st.chat_input("Type a message"):
    httpx.post(
        f"{BRIDGE}/api/v1/sessions/{session_id}/messages",
        json={"role": "user", "content": prompt}, timeout=10,
    )

time.sleep(2)  # the original's polling period
st.rerun()
