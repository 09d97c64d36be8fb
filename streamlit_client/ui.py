"""`chat()`: the whole bridge chat in any Streamlit page with one call.

```python
from streamlit_client import chat

chat("http://127.0.0.1:7881", title="Support")
```

Around the chat, by default: a title, and a sidebar with "New chat", the chats this
browser opened (by their first words) and the connection state (`streamlit_client.chats`).
`title=None` and `sidebar=False` leave them out, for pages that have their own.

How a page run is split (measured in docs/push-approaches.md): the full run draws the
history once (older messages collapsed) and the chat input; the live part, in an
`st.fragment`, holds the listener component and the messages pushed since, so a push
reruns only the fragment. Every `LIVE_MAX` pushed messages, a template change or a lost
history, the fragment asks for one full run, which moves the live messages into history.

A session id is all it takes to read and post to a chat: the page mints a session token
for whatever id it is asked for. With `bind_user` (`BRIDGE_CHAT_BIND_USER`) the page
creates ids carrying the signed-in user's prefix (`streamlit_client.config.user_prefix`)
and refuses, before it asks the bridge anything, every id without it.
"""

from __future__ import annotations

import time
import uuid
from functools import partial

import httpx
import streamlit as st

from streamlit_client.chats import draw_sidebar
from streamlit_client.client import BridgeClient, BridgeHTTPError, ws_base
from streamlit_client.component import mount_listener
from streamlit_client.config import ChatConfig, carries_prefix, new_session_id, user_prefix
from streamlit_client.render import draw_history, draw_message
from streamlit_client.state import ChatState

__all__ = ["LIVE_MAX", "chat"]

LIVE_MAX = 30  # pushed messages drawn by the fragment before a full run compacts them
HISTORY_LOAD = 1000  # newest messages loaded when a tab opens; older ones are only counted
TOKEN_REFRESH_S = 600.0


def chat(
    bridge_url: str | None = None,
    session_id: str | None = None,
    *,
    api_key: str | None = None,
    browser_bridge_url: str | None = None,
    history_limit: int | None = None,
    bind_user: bool | None = None,
    key: str = "bridge_chat",
    title: str | None = "Chat",
    sidebar: bool = True,
) -> str:
    """Draw the chat of one bridge session and keep it live; returns the session id.

    Arguments left out come from `BRIDGE_*` variables (`streamlit_client.config`).
    Without `session_id` the page's `?session=` is used, or a new session is created and
    put into the URL. `key` tells apart several chats on one page.

    `bind_user` binds sessions to the signed-in user (`st.user`, or the header an
    authenticating proxy sets, `BRIDGE_CHAT_USER_HEADER`); it needs an API key. New ids
    then carry the user's prefix, and any other id, from `?session=` or `session_id`,
    is refused: an error is shown, no token is minted and no socket opened.

    `title` is drawn above the chat (`st.title`; None: none). With `sidebar`, the
    sidebar holds "New chat", the chats this browser opened, newest first, to switch
    between, and the connection state; with an explicit `session_id` the caller picks the
    session, so only the connection state is shown. Use `sidebar=False` for all but one
    chat of a page.
    """
    env = ChatConfig.from_env()
    config = ChatConfig(
        bridge_url=(bridge_url or env.bridge_url).rstrip("/"),
        browser_bridge_url=browser_bridge_url or env.browser_bridge_url,
        api_key=api_key or env.api_key,
        history_limit=env.history_limit if history_limit is None else history_limit,
        bind_user=env.bind_user if bind_user is None else bind_user,
        user_header=env.user_header,
        user_claim=env.user_claim,
    )
    if title:
        st.title(title)
    prefix = _owner_prefix(key, config) if config.bind_user else None
    if config.bind_user and prefix is None:
        st.stop()
    client = _client(config.bridge_url, config.api_key)
    chrome = partial(
        draw_sidebar,
        key,
        client,
        browser_url=config.browser_url,
        prefix=prefix,
        switchable=session_id is None,
    )
    state = _session_state(key, client, session_id, prefix)
    if state is None:
        if sidebar:
            chrome(state=None)  # the user's other chats, and whether the bridge answers
        st.stop()

    prompt = st.chat_input(state.template.input_msg, key=f"{key}.input")
    if prompt:
        _post(client, state, prompt)
    if sidebar:
        chrome(state=state)  # after the post: a first message names the chat at once
    state.start_full_run()
    draw_history(
        state.history(),
        state.template,
        config.history_limit,
        state.welcome_seq,
        unloaded=state.base,
    )
    _live(key, ws_base(config.browser_url), _token(key, client, state))
    return state.session_id


@st.cache_resource(show_spinner=False)
def _client(bridge_url: str, api_key: str | None) -> BridgeClient:
    # One pooled, thread-safe client per bridge for all tabs of this server.
    return BridgeClient(bridge_url, api_key=api_key)


def _owner_prefix(key: str, config: ChatConfig) -> str | None:
    """The signed-in user's session prefix, or None after saying why there is none."""
    if not config.api_key:
        # Without a key the bridge lets anyone read any session directly: a binding
        # enforced by the page alone would only pretend to protect.
        st.error(
            "This page binds chats to users (BRIDGE_CHAT_BIND_USER), which needs the "
            "bridge's API key (BRIDGE_API_KEY). No chat is opened."
        )
        return None
    identity = _user_identity(config)
    if identity is None:
        if config.user_header:
            st.error(
                "Please sign in: chats on this page belong to the user who started them, "
                f"and this request carries no signed-in user ({config.user_header} header)."
            )
        elif st.user.get("is_logged_in") is False:  # Streamlit's login is configured
            st.error("Please sign in: chats on this page belong to the user who started them.")
            st.button("Log in", key=f"{key}.login", on_click=st.login)
        else:
            st.error(
                "Please sign in: chats on this page belong to the user who started them, "
                "but no sign-in is configured (st.login's [auth] section in secrets.toml, or "
                "BRIDGE_CHAT_USER_HEADER behind an authenticating proxy)."
            )
        return None
    return user_prefix(config.api_key, identity)


def _user_identity(config: ChatConfig) -> str | None:
    """Who is signed in: the proxy's header when one is configured, else `st.user`."""
    if config.user_header:
        values = st.context.headers.get_all(config.user_header)
        # Twice is ambiguous (a client's own copy beside the proxy's): nobody.
        if len(values) != 1 or not values[0].strip():
            return None
        return values[0].strip()
    if st.user.get("is_logged_in") is not True:
        return None
    claim = st.user.get(config.user_claim)
    return claim if isinstance(claim, str) and claim else None


def _session_state(
    key: str,
    client: BridgeClient,
    session_id: str | None,
    prefix: str | None = None,
) -> ChatState | None:
    """This tab's state, loading the session over HTTP on the first run.

    With a user `prefix`, an id without it is refused before the bridge is asked.
    """
    wanted = session_id or st.query_params.get("session") or None
    state: ChatState | None = st.session_state.get(f"{key}.state")
    if state is not None and prefix is not None and not carries_prefix(state.session_id, prefix):
        # Another user's, from before a sign-in change: never reused, nor left for the
        # fragment (which reruns without this check) to draw.
        state = None
        st.session_state.pop(f"{key}.state", None)
        st.session_state.pop(f"{key}.token", None)
    if prefix is not None and wanted is not None and not carries_prefix(wanted, prefix):
        _refuse(key, from_url=session_id is None)
        return None
    if state is not None and (wanted is None or wanted == state.session_id):
        return state
    sid = wanted or new_session_id(prefix)
    try:
        # Joining creates the session if needed, seeded with the welcome message.
        client.create_session(sid)
        history = client.messages(sid, limit=HISTORY_LOAD)
        template = client.template()
    except BridgeHTTPError as exc:
        st.error(f"The bridge refused session {sid!r}: {exc.detail}")
        return None
    except httpx.HTTPError as exc:
        st.error(f"Cannot reach the bridge at {client.base_url} ({exc}).")
        st.button("Retry", key=f"{key}.retry")  # a click reruns the page, which retries
        return None
    state = ChatState(session_id=sid, template=template)
    state.load(history)
    st.session_state[f"{key}.state"] = state
    if session_id is None and st.query_params.get("session") != sid:
        st.query_params["session"] = sid
    return state


def _refuse(key: str, *, from_url: bool) -> None:
    st.error(
        "This chat belongs to another user. Chats on this page are bound to the user who "
        "started them, and you can open only your own."
    )
    if from_url:
        st.button("Start a new chat", key=f"{key}.new", on_click=_forget_session)


def _forget_session() -> None:
    # Runs before the rerun the click causes, which then creates a chat of this user.
    st.query_params.pop("session", None)


def _post(client: BridgeClient, state: ChatState, text: str) -> None:
    try:
        # The id makes a retried POST idempotent; the echo over the socket is deduplicated.
        state.add(client.post_message(state.session_id, "user", text, id=uuid.uuid4().hex))
    except (BridgeHTTPError, httpx.HTTPError) as exc:
        st.error(f"Your message was not sent: {exc}")


def _token(key: str, client: BridgeClient, state: ChatState) -> str | None:
    """A session token for the browser's WebSocket when the bridge needs an API key."""
    if not client.api_key:
        return None
    cached = st.session_state.get(f"{key}.token")
    if (
        cached
        and cached[0] == state.session_id
        and time.time() - cached[1] < TOKEN_REFRESH_S
        and not state.token_expired
    ):
        return str(cached[2])
    state.token_expired = False
    try:
        token = client.session_token(state.session_id)
    except (BridgeHTTPError, httpx.HTTPError) as exc:
        st.error(f"Could not get a session token from the bridge: {exc}")
        return None
    st.session_state[f"{key}.token"] = (state.session_id, time.time(), token)
    return token


def _on_push(key: str) -> None:
    """Runs before the rerun a pushed value causes: merge it into this tab's state."""
    state: ChatState | None = st.session_state.get(f"{key}.state")
    component = st.session_state.get(key)
    if state is not None and component is not None:
        state.apply_push(component.get("push"))


@st.fragment
def _live(key: str, ws_url: str, token: str | None) -> None:
    """The live part: messages pushed since the last full run, and the listener."""
    state: ChatState = st.session_state[f"{key}.state"]
    if state.wants_full_run(LIVE_MAX):
        st.rerun(scope="app")
    fresh = state.take_fresh()
    typing = fresh if state.template.write_speed > 0 else set()
    live = state.live()
    # Messages to type out come after the listener, so that its ack reaches the browser
    # at once (the next push interrupts the typing); the rest come before it, so that a
    # new message's element is sent ahead of the component's.
    split = next((i for i, m in enumerate(live) if m.seq in typing), len(live))
    box = st.container()
    with box:
        for message in live[:split]:
            draw_message(message, state.template, welcome_seq=state.welcome_seq)
    mount_listener(
        key,
        {
            "session_id": state.session_id,
            "ws_url": ws_url,
            "token": token,
            "have": state.have,
            "ack_nonce": state.ack_nonce,
            "resets": state.resets,
            "avatars": {"ai": state.template.ai_avatar, "user": state.template.user_avatar},
        },
        partial(_on_push, key),
    )
    with box:
        for message in live[split:]:
            draw_message(
                message, state.template, welcome_seq=state.welcome_seq, typed=message.seq in typing
            )
