"""The page around the chat: a sidebar with "New chat", the chats this browser opened
(by their first words) and the connection state. Drawn by `chat(sidebar=True)`.

- **Which chats.** `chats.js`, a small `st.components.v2` component (no iframe, no build
  step), keeps the session ids this browser opened, with when it last opened each, in the
  browser's `localStorage` (per page origin, component key and bridge URL) and sends
  that list as its value. Python validates it (the bridge's session id rule, the user's
  prefix with binding, at most `MAX_CHATS`, newest first) and sends back the items to
  draw: `[{id, title}]`. Nothing from storage is drawn before Python checked it.
- **Their first words.** The current chat's come from the page's own state; every other
  chat's from the bridge: one streamed `GET .../messages` per chat, read only up to its
  first user message (at most `TITLE_READ_MAX` characters), a few in parallel, then
  cached per process (`TITLE_TTL_S`; a chat without a user message yet for
  `UNTITLED_TTL_S`). A page with 30 chats in the list asks the bridge at most 29 times,
  and only when those are not cached.
- **Connection state.** Whether the bridge answers `GET /healthz` (cached `HEALTH_TTL_S`
  per bridge) and its URL (without user info); in the browser, the listener's live socket
  state (`.sb-listener[data-status]`) takes over when there is one.
- **Cheap.** The sidebar is an `st.fragment` of its own, drawn by the full run: pushes
  rerun only the listener's fragment, never this one, and the list's value coming back
  from the browser reruns only this one. Switching chats (an item, or "New chat") sets
  `?session=` and reruns the app: no page reload.

Session ids and message text are only ever drawn as text (`textContent` in `chats.js`);
nothing here builds HTML, markdown or a file path from them.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeGuard
from urllib.parse import urlsplit, urlunsplit

import httpx
import streamlit as st

from streamlit_client.client import BridgeClient, session_path
from streamlit_client.config import carries_prefix, new_session_id
from streamlit_client.models import Message
from streamlit_client.state import ChatState

__all__ = [
    "COMPONENT_NAME",
    "MAX_CHATS",
    "NEW_CHAT",
    "TITLE_CHARS",
    "browser_chats",
    "draw_sidebar",
    "first_user_message",
    "first_words",
    "shown_url",
    "valid_session_id",
]

COMPONENT_NAME = "streamlit_bridge_chats"
MAX_CHATS = 30  # chats listed (and remembered by the browser)
TITLE_CHARS = 40  # characters of a chat's first words
NEW_CHAT = "New chat"  # the title of a chat without a user message yet
UNKNOWN = "…"  # the title of a chat not read (the bridge does not answer)
HEALTH_TTL_S = 5.0
TITLE_TTL_S = 600.0  # a chat's first user message does not change; a deleted chat may
UNTITLED_TTL_S = 10.0  # a chat without a user message may get one
TITLE_READ_MAX = 256 * 1024  # characters of a chat's history read looking for its title
TITLE_TIMEOUT_S = 3.0
FETCH_WORKERS = 4
_CACHE_SIZE = 4096

_SESSION_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")  # the bridge's rule (bridge.models)
_HERE = Path(__file__).resolve().parent

_CSS = """
.sb-chats { display: flex; flex-direction: column; gap: 0.15rem; font-size: 0.9rem; }
.sb-chats-heading {
  margin: 0.5rem 0 0.25rem; padding: 0 0.6rem; font-size: 0.75rem; font-weight: 600;
  letter-spacing: 0.02em;
  text-transform: uppercase; opacity: 0.6;
}
.sb-chats-heading[hidden], .sb-chats-list[hidden] { display: none; }
.sb-chats-list { display: flex; flex-direction: column; gap: 0.1rem; }
.sb-chats-item {
  display: block; width: 100%; padding: 0.4rem 0.6rem; border: 0; border-radius: 0.5rem;
  background: transparent; color: inherit; font: inherit; text-align: left; cursor: pointer;
  white-space: nowrap; overflow: hidden; text-overflow: ellipsis;
}
.sb-chats-item:hover {
  background: color-mix(in srgb, var(--st-text-color, #31333f) 7%, transparent);
}
.sb-chats-item:focus-visible { outline: 2px solid var(--st-primary-color, #ff4b4b); }
.sb-chats-current, .sb-chats-current:hover {
  background: color-mix(in srgb, var(--st-text-color, #31333f) 12%, transparent);
  font-weight: 600;
}
.sb-chats-opening { opacity: 0.6; }
.sb-chats-connection {
  margin-top: 1.25rem; padding-top: 0.75rem; font-size: 0.8rem;
  border-top: 1px solid color-mix(in srgb, var(--st-text-color, #31333f) 15%, transparent);
}
.sb-chats-state { display: flex; align-items: center; gap: 0.4rem; font-weight: 600; }
.sb-chats-dot {
  width: 0.55rem; height: 0.55rem; border-radius: 50%; flex: none; background: #a3a8b8;
}
.sb-chats-state[data-state="ok"] .sb-chats-dot { background: #21c354; }
.sb-chats-state[data-state="waiting"] .sb-chats-dot { background: #faca2b; }
.sb-chats-state[data-state="down"] .sb-chats-dot { background: #ff4b4b; }
.sb-chats-details {
  display: grid; grid-template-columns: auto 1fr; gap: 0.2rem 0.5rem; margin-top: 0.4rem;
  align-items: baseline;
}
.sb-chats-label { opacity: 0.6; }
.sb-chats-details [hidden] { display: none; }
.sb-chats-url, .sb-chats-session {
  opacity: 0.75; word-break: break-all; font-size: 0.75rem;
  font-family: var(--st-code-font, ui-monospace, monospace);
}
"""

# Registered once at import, like the listener.
_render = st.components.v2.component(
    COMPONENT_NAME,
    js=(_HERE / "chats.js").read_text(encoding="utf-8"),
    css=_CSS,
    isolate_styles=False,  # theme variables and page fonts, like Streamlit's own elements
)


# -- pure helpers ---------------------------------------------------------------------------


def valid_session_id(value: object) -> TypeGuard[str]:
    """Whether `value` is a session id the bridge accepts."""
    return (
        isinstance(value, str)
        and _SESSION_ID.fullmatch(value) is not None
        and value not in (".", "..")
    )


def first_words(text: str, limit: int = TITLE_CHARS) -> str:
    """`text` on one line, cut at a word boundary to at most `limit` characters (with …)."""
    line = " ".join(text.split())
    if len(line) <= limit:
        return line
    cut = line[: limit - 1]
    space = cut.rfind(" ")
    if space >= limit // 2:
        cut = cut[:space]
    return cut.rstrip() + "…"


def title_of(message: Message | Mapping[str, Any] | None) -> str | None:
    """The words a chat is listed by, from its first user message (None: no such message)."""
    if message is None:
        return None
    kind: object
    content: object
    if isinstance(message, Message):
        kind, content = message.type, message.content
    else:
        kind, content = message.get("type"), message.get("content")
    if kind == "image":
        return "Image"
    return first_words(content) if isinstance(content, str) and content.strip() else None


def first_user_message(texts: Iterable[str], budget: int = TITLE_READ_MAX) -> dict[str, Any] | None:
    """The first `role: user` object of a JSON array arriving in pieces (a streamed
    `GET .../messages`), reading no further than needed and at most `budget` characters."""
    decoder = json.JSONDecoder()
    buffer, read, opened = "", 0, False
    for text in texts:
        read += len(text)
        buffer += text
        pos = 0
        while True:
            while pos < len(buffer) and buffer[pos] in " \t\r\n,":
                pos += 1
            if pos >= len(buffer):
                break
            if not opened:
                if buffer[pos] != "[":
                    return None
                opened, pos = True, pos + 1
                continue
            if buffer[pos] == "]":
                return None
            try:
                item, pos_after = decoder.raw_decode(buffer, pos)
            except json.JSONDecodeError:
                break  # incomplete: wait for the next piece
            pos = pos_after
            if isinstance(item, dict) and item.get("role") == "user":
                return item
        buffer = buffer[pos:]
        if read >= budget:
            return None
    return None


def browser_chats(value: object, prefix: str | None = None) -> list[str]:
    """The session ids of the browser's list (the component's value, untrusted): valid
    ids only, with binding only the user's own, newest first, at most `MAX_CHATS`."""
    if not isinstance(value, list):
        return []
    newest: dict[str, float] = {}
    for entry in value[: MAX_CHATS * 4]:
        if not isinstance(entry, Mapping):
            continue
        sid, at = entry.get("id"), entry.get("at")
        if not valid_session_id(sid) or (prefix is not None and not carries_prefix(sid, prefix)):
            continue
        when = float(at) if isinstance(at, int | float) and not isinstance(at, bool) else 0.0
        when = when if math.isfinite(when) else 0.0
        newest[sid] = max(when, newest.get(sid, when))
    ranked = sorted(newest.items(), key=lambda item: item[1], reverse=True)
    return [sid for sid, _ in ranked[:MAX_CHATS]]


def shown_url(url: str) -> str:
    """`url` as the sidebar shows it: no user info, query or fragment."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = f"{host}:{parts.port}" if parts.port else host
    except ValueError:
        return ""
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


# -- caches shared by the tabs of this server ---------------------------------------------


class _TitleCache:
    """Session id -> (title or None, when read); bounded, thread-safe."""

    def __init__(self, size: int = _CACHE_SIZE) -> None:
        self._items: OrderedDict[str, tuple[str | None, float]] = OrderedDict()
        self._lock = threading.Lock()
        self._size = size

    def get(self, sid: str, now: float) -> tuple[bool, str | None]:
        with self._lock:
            entry = self._items.get(sid)
            if entry is None:
                return False, None
            title, at = entry
            if now - at > (TITLE_TTL_S if title is not None else UNTITLED_TTL_S):
                del self._items[sid]
                return False, None
            self._items.move_to_end(sid)
            return True, title

    def put(self, sid: str, title: str | None, now: float) -> None:
        with self._lock:
            self._items[sid] = (title, now)
            self._items.move_to_end(sid)
            while len(self._items) > self._size:
                self._items.popitem(last=False)


@st.cache_resource(show_spinner=False)
def _titles(bridge_url: str) -> _TitleCache:
    return _TitleCache()


@st.cache_resource(show_spinner=False)
def _reader(bridge_url: str, api_key: str | None) -> httpx.Client:
    # Its own pool: title reads stream and are cut short; the page's client stays untouched.
    headers = {"x-api-key": api_key} if api_key else {}
    return httpx.Client(base_url=bridge_url, headers=headers, timeout=TITLE_TIMEOUT_S)


class _Health:
    """Whether each bridge answered `/healthz`, asked at most every `HEALTH_TTL_S`."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[bool, float]] = {}
        self._lock = threading.Lock()

    def __call__(self, client: BridgeClient) -> bool:
        now = time.monotonic()
        with self._lock:
            seen = self._seen.get(client.base_url)
        if seen is not None and now - seen[1] < HEALTH_TTL_S:
            return seen[0]
        ok = client.healthy()
        with self._lock:
            self._seen[client.base_url] = (ok, time.monotonic())
        return ok


_healthy = _Health()


def _read_title(reader: httpx.Client, sid: str) -> str | None:
    """The chat's first words, read from the bridge (None: no user message, or no answer)."""
    try:
        with reader.stream("GET", f"{session_path(sid)}/messages", params={"limit": 0}) as answer:
            if answer.status_code != 200:
                return None
            return title_of(first_user_message(answer.iter_text()))
    except httpx.HTTPError:
        return None


def titles(
    bridge_url: str,
    api_key: str | None,
    ids: Sequence[str],
    known: Mapping[str, str | None],
    *,
    fetch: bool = True,
) -> dict[str, str | None]:
    """First words of each chat in `ids`: `known` ones as given (and cached), the rest
    from the cache or, with `fetch`, the bridge (at most `len(ids)` requests,
    `FETCH_WORKERS` at once). Chats neither known nor read are left out."""
    cache = _titles(bridge_url)
    now = time.monotonic()
    found: dict[str, str | None] = {}
    for sid, title in known.items():
        cache.put(sid, title, now)
        found[sid] = title
    missing = []
    for sid in ids:
        if sid in found:
            continue
        hit, title = cache.get(sid, now)
        if hit:
            found[sid] = title
        else:
            missing.append(sid)
    if missing and fetch:
        reader = _reader(bridge_url, api_key)
        with ThreadPoolExecutor(max_workers=min(FETCH_WORKERS, len(missing))) as pool:
            read = list(pool.map(partial(_read_title, reader), missing))
        now = time.monotonic()
        for sid, title in zip(missing, read, strict=True):
            cache.put(sid, title, now)
            found[sid] = title
    return found


# -- the sidebar -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _View:
    """What the sidebar fragment needs from the full run that drew it."""

    key: str
    bridge_url: str
    browser_url: str
    api_key: str | None
    prefix: str | None
    current: str | None
    # The current chat's words, when the tab's state holds its start (else read like
    # any other chat's); None with current_known: no user message yet.
    current_title: str | None
    current_known: bool
    switchable: bool


def current_title(state: ChatState) -> tuple[bool, str | None]:
    """(known, words) of the current chat, from what the tab loaded: known only if the
    tab loaded the chat's start."""
    if state.base > 0 or not state.messages:
        # Its first messages were never loaded, or nothing is loaded yet (a chat just
        # switched to, drawn before its history arrived): read it like any other chat,
        # rather than remember "no user message" for it.
        return False, None
    # Every message the tab knows, not only those drawn yet: a message just typed is in.
    first = next(
        (state.messages[s] for s in sorted(state.messages) if state.messages[s].role == "user"),
        None,
    )
    return True, title_of(first)


def draw_sidebar(
    key: str,
    client: BridgeClient,
    *,
    browser_url: str,
    prefix: str | None,
    state: ChatState | None,
    switchable: bool,
) -> None:
    """Draw the sidebar: "New chat" and the chat list when the page picks the session
    (`switchable`), and always the connection state."""
    known, words = current_title(state) if state is not None else (False, None)
    view = _View(
        key=key,
        bridge_url=client.base_url,
        browser_url=browser_url,
        api_key=client.api_key,
        prefix=prefix,
        current=state.session_id if state is not None else None,
        current_title=words,
        current_known=known,
        switchable=switchable,
    )
    with st.sidebar:
        _sidebar(view, client)


def _switch_flag(key: str) -> str:
    return f"{key}.chrome.switch"


def _open(key: str, prefix: str | None, sid: str | None = None) -> None:
    """Callback: switch the page to `sid` (a new chat when None) once the fragment reruns."""
    st.query_params["session"] = sid or new_session_id(prefix)
    st.session_state[_switch_flag(key)] = True


def _on_open(key: str, prefix: str | None) -> None:
    """Callback of the component's `open` trigger (a click on a listed chat)."""
    value = st.session_state.get(f"{key}.chats") or {}
    sid = value.get("open") if isinstance(value, Mapping) else None
    if valid_session_id(sid) and (prefix is None or carries_prefix(sid, prefix)):
        _open(key, prefix, sid)


def _ignore() -> None:
    """The list's new value needs no callback: the fragment's rerun reads it."""


@st.fragment
def _sidebar(view: _View, client: BridgeClient) -> None:
    if st.session_state.pop(_switch_flag(view.key), False):
        st.rerun(scope="app")  # the session changed: the whole page draws the other chat
    if view.switchable:
        st.button(
            NEW_CHAT,
            key=f"{view.key}.chrome.new",
            icon=":material/edit_square:",
            on_click=_open,
            args=(view.key, view.prefix),
            width="stretch",
        )
    component_key = f"{view.key}.chats"
    healthy = _healthy(client)
    items: list[dict[str, str]] = []
    seen: int | None = None
    listed: list[str] = []
    if view.switchable:
        state = st.session_state.get(component_key)
        value = state.get("chats") if isinstance(state, Mapping) else None
        if isinstance(value, Mapping):
            seen = value.get("v") if isinstance(value.get("v"), int) else None
            listed = browser_chats(value.get("list"), view.prefix)
        if view.current is not None and view.current not in listed:
            listed = [view.current, *listed][:MAX_CHATS]
        known = {}
        if view.current is not None and view.current_known:
            known[view.current] = view.current_title
        # A bridge that does not answer is not asked 29 times more.
        words = titles(view.bridge_url, view.api_key, listed, known, fetch=healthy)
        items = [
            {"id": sid, "title": words[sid] or NEW_CHAT if sid in words else UNKNOWN}
            for sid in listed
        ]
    _render(
        key=component_key,
        data={
            "key": component_key,
            # Per bridge: another bridge's chats do not exist there.
            "storage_key": f"streamlit-bridge.chats:{view.key}:{view.browser_url}",
            "max": MAX_CHATS,
            "current": view.current if view.switchable else None,  # recorded in the list
            "session": view.current,
            "listed": view.switchable,
            "items": items,
            "seen": seen,  # the version of the browser's list read here
            "health": {"ok": healthy, "url": shown_url(view.browser_url)},
        },
        on_chats_change=_ignore,
        on_open_change=partial(_on_open, view.key, view.prefix),
    )
