"""One frozen settings object; the only place that reads `BRIDGE_*` environment variables.

Every field is a CLI flag of `streamlit-bridge serve` and an environment variable named
`BRIDGE_` + the field name in upper case (`max_message_bytes` -> `BRIDGE_MAX_MESSAGE_BYTES`).
Flags win over the environment, the environment over the defaults. Every limit is bounded.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from bridge.errors import InvalidInput

__all__ = ["DEFAULT_STORE", "Settings"]

DEFAULT_STORE = "sqlite:///data/bridge.db"


def _default_origins() -> tuple[str, ...]:
    return tuple(f"http://{host}:5001" for host in ("localhost", "127.0.0.1", "[::1]"))


@dataclass(frozen=True, slots=True)
class Settings:
    """Configuration of one bridge process. Build with `Settings.load(env, **overrides)`."""

    host: str = "127.0.0.1"
    port: int = 7881
    store: str = DEFAULT_STORE
    api_key: str | None = None
    allowed_origins: tuple[str, ...] = field(default_factory=_default_origins)
    # Empty means: loopback names when bound to loopback, any host otherwise.
    allowed_hosts: tuple[str, ...] = ()
    token_ttl_s: int = 3600
    max_message_bytes: int = 256 * 1024
    max_frame_bytes: int = 1024 * 1024
    subscriber_buffer: int = 1000
    subscriber_buffer_bytes: int = 4 * 1024 * 1024
    history_limit: int = 10_000
    listen_timeout_default_s: float = 120.0
    listen_timeout_max_s: float = 600.0
    listen_history_limit: int = 100
    listen_waiters_max: int = 1000
    # A claimed Listen message not answered (no `ai` message in its session) within this
    # many seconds is offered again, at most `listen_attempts_max` claims in all; 0 = off.
    listen_lease_s: float = 300.0
    listen_attempts_max: int = 3
    presence_interval_s: float = 0.25
    ping_interval_s: float = 10.0
    ping_timeout_s: float = 20.0
    rate_limit_per_s: float = 0.0
    rate_limit_burst: int = 50
    commit_batch_max: int = 512
    sqlite_synchronous: str = "FULL"
    sqlite_busy_timeout_ms: int = 5000
    log_level: str = "info"
    # -- bounds added by the security review (docs/security.md, "Resource exhaustion") --
    sockets_max: int = 10_000
    sockets_per_client_max: int = 500
    send_timeout_s: float = 10.0
    replay_buffer_bytes: int = 2 * 1024 * 1024
    listen_backlog_per_session: int = 1_000
    sessions_max: int = 100_000
    list_limit_max: int = 10_000
    stream_idle_timeout_s: float = 60.0
    stream_max_s: float = 3600.0
    stream_coalesce_s: float = 0.01
    token_secret: str | None = None
    allow_no_key: bool = False
    # -- runs (docs/protocol.md section 7): the bridge answers user messages itself --
    # A Langflow server or `lfx serve` and the flow to run, or any AG-UI endpoint.
    langflow_url: str | None = None
    flow: str | None = None
    langflow_api_key: str | None = field(default=None, repr=False)  # never in a log
    agent_url: str | None = None
    # `Name: value` headers sent to the agent (comma-separated in BRIDGE_AGENT_HEADER).
    agent_header: tuple[str, ...] = field(default=(), repr=False)
    runs_max: int = 16
    run_timeout_s: float = 300.0

    @classmethod
    def load(cls, env: Mapping[str, str], **overrides: Any) -> Settings:
        """Defaults, then `BRIDGE_*` from `env`, then `overrides` that are not None."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(f"BRIDGE_{f.name.upper()}")
            if raw is not None and raw != "":
                values[f.name] = _parse(f.name, raw, _field_type(f))
        for name, value in overrides.items():
            if value is not None:
                values[name] = value
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        """Raise `InvalidInput` naming the first setting that is out of its range."""
        bounds = {
            "port": (0, 65535),
            "token_ttl_s": (1, 30 * 86400),
            "max_message_bytes": (1, 16 * 1024 * 1024),
            "max_frame_bytes": (1024, 64 * 1024 * 1024),
            "subscriber_buffer": (1, 1_000_000),
            "subscriber_buffer_bytes": (1024, 1024**3),
            "history_limit": (1, 10_000_000),
            "listen_timeout_default_s": (0, 86400),
            "listen_timeout_max_s": (0, 86400),
            "listen_history_limit": (0, 100_000),
            "listen_waiters_max": (1, 100_000),
            "listen_attempts_max": (1, 100),
            "presence_interval_s": (0, 60),
            "ping_interval_s": (0, 3600),
            "ping_timeout_s": (0, 3600),
            "rate_limit_per_s": (0, 1_000_000),
            "rate_limit_burst": (1, 1_000_000),
            "commit_batch_max": (1, 100_000),
            "sqlite_busy_timeout_ms": (0, 600_000),
            "sockets_max": (1, 10_000_000),
            "sockets_per_client_max": (1, 10_000_000),
            "send_timeout_s": (0.1, 3600),
            "replay_buffer_bytes": (64 * 1024, 1024**3),
            "listen_backlog_per_session": (1, 1_000_000),
            "sessions_max": (1, 100_000_000),
            "list_limit_max": (1, 1_000_000),
            "stream_idle_timeout_s": (0.1, 86400),
            "stream_max_s": (1, 7 * 86400),
            "stream_coalesce_s": (0, 1),
            "runs_max": (1, 10_000),
            "run_timeout_s": (1, 86400),
        }
        for name, (low, high) in bounds.items():
            value = getattr(self, name)
            if not low <= value <= high:
                raise InvalidInput(f"setting {name}={value} is outside {low}..{high}")
        if self.listen_lease_s != 0 and not 1 <= self.listen_lease_s <= 86400:
            # 0 turns leases off; a lease below a second would re-offer messages to a flow
            # that is still answering them.
            raise InvalidInput(
                f"setting listen_lease_s={self.listen_lease_s} is outside 1..86400 (or 0 = off)"
            )
        if self.token_secret is not None and len(self.token_secret.encode()) < 32:
            raise InvalidInput("setting token_secret must be at least 32 bytes (256 bits)")
        if not self.allow_no_key and not self.api_key and not self.on_loopback:
            raise InvalidInput(
                f"refusing to serve on {self.host} without an API key: anyone who reaches "
                "the port could read every chat. Set BRIDGE_API_KEY (--api-key), or pass "
                "--allow-no-key (BRIDGE_ALLOW_NO_KEY=1) if something in front authenticates"
            )
        self._check_runs()
        if self.sqlite_synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise InvalidInput("setting sqlite_synchronous must be OFF, NORMAL, FULL or EXTRA")

    def _check_runs(self) -> None:
        if self.langflow_url and self.agent_url:
            raise InvalidInput(
                "set either a Langflow URL (--langflow-url) or an AG-UI agent URL "
                "(--agent-url), not both: one of them answers the chat"
            )
        if self.langflow_url and not self.flow:
            raise InvalidInput(
                "--langflow-url needs --flow (BRIDGE_FLOW): the id of the flow to run for "
                "each user message"
            )
        if self.runs and self.runs_max > self.listen_waiters_max:
            raise InvalidInput(
                f"setting runs_max={self.runs_max} is above listen_waiters_max="
                f"{self.listen_waiters_max}: each run waits for work as a Listen consumer"
            )
        if self.flow and not _is_uuid(self.flow):
            raise InvalidInput(
                f"--flow {self.flow[:60]!r} is not a flow id: Langflow's /api/v2/workflows "
                "takes the flow's UUID (in the editor's URL, /flow/<id>, or its API panel)"
            )
        if self.flow and not self.langflow_url:
            raise InvalidInput("--flow needs --langflow-url (BRIDGE_LANGFLOW_URL)")
        for url in (self.langflow_url, self.agent_url):
            if url and not url.startswith(("http://", "https://")):
                raise InvalidInput(f"{url[:80]!r} is not an http:// or https:// URL")
        for header in self.agent_header:
            name, colon, _ = header.partition(":")
            if not colon or not name.strip() or any(c in name for c in " \t\r\n"):
                raise InvalidInput(f"agent header {header[:40]!r} is not of the form 'Name: value'")

    @property
    def runs(self) -> bool:
        """True when the bridge answers user messages by running a flow or an agent."""
        return bool(self.langflow_url or self.agent_url)

    @property
    def on_loopback(self) -> bool:
        """True when the bind address is a loopback address or name."""
        return self.host in ("127.0.0.1", "localhost", "::1") or self.host.startswith("127.")

    @property
    def effective_allowed_hosts(self) -> tuple[str, ...]:
        """`allowed_hosts`, or its default for the bind address."""
        if self.allowed_hosts:
            return self.allowed_hosts
        return ("localhost", "127.0.0.1", "[::1]", "::1") if self.on_loopback else ("*",)


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


def _field_type(f: dataclasses.Field[Any]) -> str:
    return str(f.type)


def _parse(name: str, raw: str, type_name: str) -> Any:
    try:
        if type_name.startswith("bool"):
            lowered = raw.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if type_name.startswith("int"):
            return int(raw)
        if type_name.startswith("float"):
            return float(raw)
        if type_name.startswith("tuple"):
            return tuple(part.strip() for part in raw.split(",") if part.strip())
    except ValueError:
        raise InvalidInput(f"BRIDGE_{name.upper()}={raw!r} is not a {type_name}") from None
    return raw
