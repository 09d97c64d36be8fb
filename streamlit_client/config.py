"""Settings of the chat page, read from `BRIDGE_*` environment variables, and the binding
of sessions to users.

| variable | meaning | default |
|---|---|---|
| `BRIDGE_URL` | the bridge as the Streamlit server reaches it | `http://127.0.0.1:7881` |
| `BRIDGE_BROWSER_URL` | the bridge as the user's browser reaches it (WebSocket) | `BRIDGE_URL` |
| `BRIDGE_API_KEY` | sent as `x-api-key`; the page then mints a session token per tab | none |
| `BRIDGE_CHAT_HISTORY` | messages drawn in full; older ones are collapsed | `50` |
| `BRIDGE_CHAT_BIND_USER` | bind sessions to the signed-in user (`1`/`true`/`yes`/`on`) | off |
| `BRIDGE_CHAT_USER_HEADER` | take the user from this request header (a proxy's) | `st.user` |
| `BRIDGE_CHAT_USER_CLAIM` | the `st.user` claim that identifies a user | `email` |

`streamlit_client.launcher.run_chat` sets them for the `streamlit run` subprocess.

Binding: a session id the page creates for a user starts with that user's prefix,
`u-` + 16 hex digits of HMAC-SHA256(API key, user identity), then `-` and a random part;
the page opens only ids that carry the current user's prefix. The HMAC keeps the
prefix from revealing the identity; the random part is what makes an id unguessable.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from bridge.wire import DEFAULT_BRIDGE_URL

__all__ = [
    "ChatConfig",
    "carries_prefix",
    "new_session_id",
    "parse_flag",
    "user_prefix",
]

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")
# Domain separation: the API key also signs other things; this HMAC input can never be
# mistaken for one of them.
_PREFIX_LABEL = b"streamlit-bridge chat user\x00"


def parse_flag(name: str, raw: str | None) -> bool:
    """A boolean variable: `1`/`true`/`yes`/`on` or `0`/`false`/`no`/`off`/empty."""
    lowered = (raw or "").strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    # A typo must not silently leave a security setting off.
    raise ValueError(f"{name}={raw!r} is not one of 1/true/yes/on or 0/false/no/off")


def user_prefix(secret: str, identity: str) -> str:
    """The session id prefix of one user: `u-` and 16 hex digits of
    HMAC-SHA256(secret, identity). Only who knows `secret` (the page) can compute it."""
    digest = hmac.new(secret.encode(), _PREFIX_LABEL + identity.encode(), hashlib.sha256)
    return "u-" + digest.hexdigest()[:16]


def new_session_id(prefix: str | None = None) -> str:
    """A fresh session id: 32 hex digits of `uuid4` (122 random bits from the OS), after
    `prefix` and a `-` when given."""
    random_part = uuid.uuid4().hex
    return f"{prefix}-{random_part}" if prefix else random_part


def carries_prefix(session_id: str, prefix: str) -> bool:
    """Whether `session_id` has the form `new_session_id(prefix)` makes: the prefix, a
    `-`, then at least one more character."""
    head = (prefix + "-").encode()
    # Bytes: compare_digest refuses non-ASCII str, and `?session=` may hold anything.
    given = session_id.encode("utf-8", "replace")
    return len(given) > len(head) and hmac.compare_digest(given[: len(head)], head)


@dataclass(frozen=True, slots=True)
class ChatConfig:
    """Where the bridge is, how the chat is drawn, and whether sessions belong to users."""

    bridge_url: str = DEFAULT_BRIDGE_URL
    browser_bridge_url: str | None = None
    api_key: str | None = None
    history_limit: int = 50
    bind_user: bool = False
    # The request header an authenticating proxy sets to the user; None: `st.user`.
    user_header: str | None = None
    user_claim: str = "email"

    @property
    def browser_url(self) -> str:
        """The bridge's URL for the browser (the server's URL unless told otherwise)."""
        return (self.browser_bridge_url or self.bridge_url).rstrip("/")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ChatConfig:
        """Build from `BRIDGE_*` variables of `env` (default: `os.environ`)."""
        env = os.environ if env is None else env
        limit = env.get("BRIDGE_CHAT_HISTORY", "")
        return cls(
            bridge_url=(env.get("BRIDGE_URL") or DEFAULT_BRIDGE_URL).rstrip("/"),
            browser_bridge_url=env.get("BRIDGE_BROWSER_URL") or None,
            api_key=env.get("BRIDGE_API_KEY") or None,
            history_limit=max(0, int(limit)) if limit.strip() else 50,
            bind_user=parse_flag("BRIDGE_CHAT_BIND_USER", env.get("BRIDGE_CHAT_BIND_USER")),
            user_header=(env.get("BRIDGE_CHAT_USER_HEADER") or "").strip() or None,
            user_claim=(env.get("BRIDGE_CHAT_USER_CLAIM") or "").strip() or "email",
        )

    def to_env(self) -> dict[str, str]:
        """The variables that reproduce this config in a subprocess (settings left at
        their defaults are left out)."""
        env = {
            "BRIDGE_URL": self.bridge_url,
            "BRIDGE_BROWSER_URL": self.browser_url,
            "BRIDGE_CHAT_HISTORY": str(self.history_limit),
        }
        if self.api_key:
            env["BRIDGE_API_KEY"] = self.api_key
        if self.bind_user:
            env["BRIDGE_CHAT_BIND_USER"] = "1"
        if self.user_header:
            env["BRIDGE_CHAT_USER_HEADER"] = self.user_header
        if self.user_claim != "email":
            env["BRIDGE_CHAT_USER_CLAIM"] = self.user_claim
        return env
