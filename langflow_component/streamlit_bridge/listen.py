"""Streamlit Listen: wait for the next message a user types in a Streamlit chat tab.

Drop-in replacement for the documented Langflow "Listen" component: the same inputs (names and
defaults, except that sending the chat template is now off by default) and requests (the long
poll `GET /api/v1/listen/message?timeout=s`, after `POST /api/v1/chats` when *Send Chat
Template* is on). The bridge hands each user message to exactly one Listen call and keeps
messages typed while no flow is listening, so none are lost. A timeout with no message ends the
run quietly: the rest of the flow is skipped and the status says so.
"""

import urllib.parse
from typing import Any

import httpx
from lfx.custom import Component
from lfx.io import (
    BoolInput,
    FloatInput,
    IntInput,
    MessageTextInput,
    Output,
    SecretStrInput,
    StrInput,
)
from lfx.schema.data import Data
from lfx.schema.message import Message

# --- begin shared helpers: generated from langflow_component/__shared_helpers__.py ---
# Do not edit this region: edit that file, then run `make components` (scripts/gen_components.py).
# Langflow rebuilds each node from its own file's source, so every component file carries a copy.

_BRIDGE_TIMEOUT = 10.0  # seconds for one ordinary call; the long poll and streams set their own
_BRIDGE_ROLES = ("ai", "user")
# Streamlit Listen marks the flow run with this key so Streamlit Send knows that a new run
# would wait for the next user message (and so cannot loop on its own).
_BRIDGE_LISTEN_MARK = "streamlit_bridge.listened_session"

# Where the bridge is and how to sign in to it: the last inputs of every component (Send adds
# its Rerun Flow inputs after them), listed in a component's inputs as *_BRIDGE_CONNECTION_INPUTS.
_BRIDGE_CONNECTION_INPUTS = [
    IntInput(
        name="port",
        display_name="Port",
        info="Port of the streamlit-bridge (ignored when Base URL is set).",
        value=7881,
        required=True,
        advanced=True,
    ),
    StrInput(
        name="hostname",
        display_name="Hostname",
        info="IP or hostname of the streamlit-bridge (ignored when Base URL is set).",
        value="localhost",
        required=True,
        advanced=True,
    ),
    StrInput(
        name="base_url",
        display_name="Base URL",
        info="Full URL of the bridge, e.g. https://chat.example.com/bridge. "
        "Overrides hostname and port.",
        value="",
        advanced=True,
    ),
    SecretStrInput(
        name="api_key",
        display_name="API Key",
        info="The bridge's API key (BRIDGE_API_KEY), sent as x-api-key. Empty: none.",
        value="",
        required=False,
        advanced=True,
    ),
]


def _text_of(value: Any) -> str:
    """The text of an input value: a connected Message or Data gives its text, None gives ''."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    get_text = getattr(value, "get_text", None)
    text = get_text() if callable(get_text) else value
    return "" if text is None else str(text)


def _bridge_base_url(base_url: Any, hostname: Any, port: Any) -> str:
    """The bridge's root URL: `base_url` when set (https and path prefixes work), else host:port."""
    url = _text_of(base_url).strip().rstrip("/")
    if url:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"Base URL must start with http:// or https://, got {url!r}.")
        return url
    host = _text_of(hostname).strip() or "localhost"
    try:
        number = int(port)
    except (TypeError, ValueError):
        raise ValueError(f"Port must be a whole number, got {port!r}.") from None
    if not 0 < number < 65536:
        raise ValueError(f"Port must be between 1 and 65535, got {number}.")
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 literal needs brackets inside a URL
    return f"http://{host}:{number}"


def _bridge_session_path(session_id: Any) -> str:
    """`/api/v1/sessions/<id>` with the id percent-encoded, so it can never pick another route."""
    session = _text_of(session_id).strip()
    if not session:
        raise ValueError(
            "Session ID is empty: connect the Session ID output of Streamlit Listen "
            "(or Streamlit Last Session), or type the id of a chat session."
        )
    if session in (".", ".."):
        # HTTP clients resolve these as path segments, which would address another route.
        raise ValueError(f"Session ID {session!r} is not a valid session id.")
    return "/api/v1/sessions/" + urllib.parse.quote(session, safe="")


def _bridge_run_session(component: Any) -> tuple[Any, str]:
    """The component's Session ID for this run, and a note for its status.

    Langflow's run API (and the Playground) overwrite every unconnected input named
    `session_id` with the run's session id: the request's `session_id`, or else the flow id. A
    session the run names wins (that is how to pin one from outside); a run that names none
    keeps the typed (or tweaked) value instead of writing to a session named after the flow. A
    connected Session ID (e.g. Streamlit Listen's) is never touched.
    """
    value = component.session_id
    vertex = getattr(component, "_vertex", None)
    graph = getattr(vertex, "graph", None)
    if vertex is None or graph is None:
        return value, ""  # not inside a Langflow run: nothing replaced it
    try:
        if vertex.get_incoming_edge_by_target_param("session_id"):
            return value, ""
        field = vertex.data["node"]["template"]["session_id"]
    except (AttributeError, KeyError, TypeError):
        return value, ""
    typed = "" if field.get("load_from_db") else _text_of(field.get("value")).strip()
    received = _text_of(value).strip()
    if received == typed:
        return value, ""
    if received and received == str(getattr(graph, "flow_id", "") or ""):
        # The run named no session, so Langflow filled in the flow id: no chat has that id.
        if typed:
            return typed, f"Session ID {typed!r} as typed (the run named no session_id)."
        raise ValueError(
            "Session ID is empty: connect Streamlit Listen's Session ID, type a session id, or "
            "pass session_id in the run request (without one, Langflow fills in the flow id, "
            "which names no chat session)."
        )
    if typed:
        return value, f"Session ID {received!r} from the run request (not the typed {typed!r})."
    return value, f"Session ID {received!r} from the run request."


def _bridge_role(role: Any) -> str:
    """The message role, checked here so a typo fails before anything is sent."""
    value = _text_of(role).strip()
    if value not in _BRIDGE_ROLES:
        raise ValueError(f"Role must be one of {', '.join(_BRIDGE_ROLES)}; got {value!r}.")
    return value


def _bridge_chat_template(component: Any) -> dict[str, Any]:
    """The chat template (the body of `POST /api/v1/chats`) from a component's template inputs:
    welcome_msg, input_msg, write_speed, ai_avatar and user_avatar."""
    try:
        write_speed = float(component.write_speed)
    except (TypeError, ValueError):
        raise ValueError(
            f"Write Speed must be a number of seconds, got {component.write_speed!r}."
        ) from None
    if write_speed < 0:
        raise ValueError(f"Write Speed cannot be negative, got {write_speed}.")
    template: dict[str, Any] = {
        "welcome_msg": _text_of(component.welcome_msg),
        "input_msg": _text_of(component.input_msg),
        "write_speed": write_speed,
    }
    # Avatars are optional: the documented template leaves them out when empty.
    for key in ("ai_avatar", "user_avatar"):
        value = _text_of(getattr(component, key)).strip()
        if value:
            template[key] = value
    return template


def _bridge_headers(api_key: Any) -> dict[str, str]:
    """The auth header for a bridge that has an API key configured (none otherwise)."""
    key = _text_of(api_key).strip()
    return {"x-api-key": key} if key else {}


def _bridge_error_detail(response: httpx.Response) -> str:
    """The bridge's own explanation of a refused request (`{"detail": ...}`), shortened."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:500] or response.reason_phrase
    detail = body.get("detail", body) if isinstance(body, dict) else body
    if isinstance(detail, list):  # request validation errors: a list of {"loc", "msg"}
        parts = []
        for item in detail:
            if isinstance(item, dict):
                where = ".".join(str(p) for p in item.get("loc", ()) if p not in ("body", "query"))
                parts.append(f"{where}: {item.get('msg')}" if where else str(item.get("msg")))
            else:
                parts.append(str(item))
        detail = "; ".join(parts)
    return str(detail)[:500]


async def _bridge_request(
    method: str,
    base: str,
    path: str,
    *,
    api_key: Any = None,
    http_timeout: Any = _BRIDGE_TIMEOUT,
    expect: tuple[int, ...] = (200,),
    headers: dict[str, str] | None = None,
    **kwargs: Any,
) -> httpx.Response:
    """One HTTP call to the bridge; any failure becomes an exception whose message says what
    happened (Langflow shows only the message, so an httpx traceback would tell users nothing).
    """
    url = base + path
    all_headers = {**_bridge_headers(api_key), **(headers or {})}
    try:
        async with httpx.AsyncClient(timeout=http_timeout) as client:
            response = await client.request(method, url, headers=all_headers, **kwargs)
    except httpx.ConnectError as exc:
        raise ConnectionError(
            f"Cannot reach the Streamlit bridge at {base} ({str(exc) or type(exc).__name__}). "
            "Is it running (streamlit-bridge serve)? Check the hostname and port, or the base URL."
        ) from None
    except httpx.TimeoutException as exc:
        # httpx timeout exceptions often have an empty message: name the call instead.
        raise TimeoutError(
            f"The Streamlit bridge at {base} did not answer {method} {path} in time "
            f"({type(exc).__name__})."
        ) from None
    except httpx.HTTPError as exc:
        raise ConnectionError(
            f"{method} {url} failed: {type(exc).__name__}: {str(exc) or 'no details'}."
        ) from None
    if response.status_code in expect:
        return response
    detail = _bridge_error_detail(response).rstrip(".")
    verb = "refused" if response.status_code < 500 else "failed on"
    hint = ""
    if response.status_code in (401, 403):
        hint = " Set the API Key input to the bridge's key (BRIDGE_API_KEY)."
    raise RuntimeError(
        f"The Streamlit bridge at {base} {verb} {method} {path} "
        f"(HTTP {response.status_code}): {detail}.{hint}"
    )


# --- end shared helpers ---

# The long poll's HTTP read timeout is the listen timeout plus this margin, so the bridge's
# own "no message" answer (204) arrives before the client gives up on the connection.
_LISTEN_READ_MARGIN = 15.0


class StreamlitBridgeListen(Component):
    """Waits for the next user message of any Streamlit chat session on the bridge."""

    display_name = "Streamlit Listen"
    description = (
        "Wait for the next message a user types in a Streamlit chat (streamlit-bridge); "
        "outputs its session ID, its text and the earlier messages of that session."
    )
    icon = "Streamlit"
    name = "StreamlitBridgeListen"

    inputs = [  # noqa: RUF012 (Langflow reads these class attributes as declared)
        IntInput(
            name="timeout",
            display_name="Timeout",
            info="Seconds to wait for a user message. If none arrives, the run ends quietly: "
            "the rest of the flow is skipped and Listen's status says 'No user message within "
            "N s' (the bridge may cap long waits).",
            placeholder="Enter the listen timeout",
            value=120,
            required=True,
        ),
        BoolInput(
            name="apply_template",
            display_name="Send Chat Template",
            info="Before waiting, send the template below to the bridge, replacing the one in "
            "force (the documented Listen always did). Off by default, so the template that "
            "Streamlit Chat Template (or an earlier run) set stays.",
            value=False,
            advanced=True,
        ),
        StrInput(
            name="welcome_msg",
            display_name="Welcome Message",
            info="Message that will be displayed at begin of every chat (sent only when Send Chat "
            "Template is on).",
            value="Welcome!",
            required=True,
            advanced=True,
        ),
        StrInput(
            name="input_msg",
            display_name="Input Message",
            info="A Text Input Placeholder for send message box (sent only when Send Chat Template "
            "is on).",
            value="Enter your message",
            required=True,
            advanced=True,
        ),
        FloatInput(
            name="write_speed",
            display_name="Write Speed",
            info="Seconds between words when the page types out an AI message (0: at once; sent "
            "only when Send Chat Template is on).",
            value=0.2,
            required=True,
            advanced=True,
        ),
        MessageTextInput(
            name="ai_avatar",
            display_name="AI Avatar",
            info="Icon to be used for AI messages. It must be an emoji! (Sent only when Send Chat "
            "Template is on.)",
            value="🤖",
            required=False,
            advanced=True,
        ),
        MessageTextInput(
            name="user_avatar",
            display_name="User Avatar",
            info="Icon to be used for user messages. It must be an emoji! (Sent only when Send "
            "Chat Template is on.)",
            value="",
            required=False,
            advanced=True,
        ),
        *_BRIDGE_CONNECTION_INPUTS,
    ]

    # Every output reads the same received message: one long poll per run (see _received).
    # group_outputs: the editor shows all four at once, so Session ID and Message Content can
    # go to different nodes (as a dropdown, connecting a second output dropped the first edge).
    outputs = [  # noqa: RUF012
        Output(
            display_name="Session ID",
            name="session_id",
            method="session_id_response",
            cache=False,
            group_outputs=True,
        ),
        Output(
            display_name="Message Content",
            name="message_content",
            method="message_content_response",
            cache=False,
            group_outputs=True,
        ),
        Output(
            display_name="History",
            name="chat_history",
            method="chat_history_response",
            cache=False,
            group_outputs=True,
        ),
        Output(
            display_name="History Text",
            name="history_text",
            method="history_text_response",
            cache=False,
            group_outputs=True,
        ),
    ]

    def _pre_run_setup(self) -> None:
        # Langflow calls this once before it builds the outputs of a run: forget the message
        # of the previous run so this run waits for a new one.
        self._received: dict[str, Any] | None = None

    async def session_id_response(self) -> Message:
        """The session the user typed in; connect it to Streamlit Send's Session ID."""
        received = await self._received_message()
        return Message(text=str(received.get("session_id", "")))

    async def message_content_response(self) -> Message:
        """What the user typed."""
        received = await self._received_message()
        return Message(
            text=str(received.get("content", "")),
            sender="User",
            sender_name="User",
        )

    async def chat_history_response(self) -> Data:
        """The session's earlier messages, as {"session_id", "history": [message, ...]}."""
        received = await self._received_message()
        return Data(
            data={
                "session_id": str(received.get("session_id", "")),
                "history": self._history(received),
            }
        )

    async def history_text_response(self) -> Message:
        """The earlier messages as "role: content" lines, ready for a prompt's {history}."""
        received = await self._received_message()
        lines = [f"{m.get('role', '?')}: {m.get('content', '')}" for m in self._history(received)]
        return Message(text="\n".join(lines))

    @staticmethod
    def _history(received: dict[str, Any]) -> list[dict[str, Any]]:
        history = received.get("history") or []
        return [m for m in history if isinstance(m, dict)]

    async def _received_message(self) -> dict[str, Any]:
        # All outputs of one run share one received message: a second long poll would take
        # (and hide from everyone else) the next user's message. An empty dict: none came.
        received = getattr(self, "_received", None)
        if received is None:
            received = await self._listen()
            self._received = received
        return received

    async def _listen(self) -> dict[str, Any]:
        """Send the template (if on), then wait for the next user message."""
        base = _bridge_base_url(self.base_url, self.hostname, self.port)
        try:
            timeout = int(self.timeout)
        except (TypeError, ValueError):
            raise ValueError(
                f"Timeout must be a whole number of seconds, got {self.timeout!r}."
            ) from None
        if timeout < 1:
            raise ValueError(f"Timeout must be at least 1 second, got {timeout}.")
        if self.apply_template:
            await _bridge_request(
                "POST",
                base,
                "/api/v1/chats",
                api_key=self.api_key,
                json=_bridge_chat_template(self),
            )
        response = await _bridge_request(
            "GET",
            base,
            "/api/v1/listen/message",
            api_key=self.api_key,
            params={"timeout": timeout},
            http_timeout=httpx.Timeout(_BRIDGE_TIMEOUT, read=timeout + _LISTEN_READ_MARGIN),
            expect=(200, 204),
        )
        if response.status_code == 204:
            return self._no_message(timeout)
        received = response.json()
        if not isinstance(received, dict) or not received.get("session_id"):
            raise RuntimeError(
                f"The Streamlit bridge at {base} sent an unexpected answer: {received!r:.300}"
            )
        self._mark_flow_run(received)
        self.status = f"{received['session_id']}: {str(received.get('content', ''))[:200]}"
        return received

    def _no_message(self, timeout: int) -> dict[str, Any]:
        """The timeout passed with no user message: a normal outcome, not an error.

        Everything downstream of this Listen is skipped (nothing to answer, nothing to send),
        the outputs are empty and the status says why; the run itself succeeds. Raising instead
        made every idle loop iteration an HTTP 500 with a long traceback in Langflow's log.
        """
        note = (
            f"No user message within {timeout} s (Streamlit Listen timeout): nothing to answer, "
            "the rest of the flow was skipped."
        )
        self.status = note
        self.log(note)
        graph = getattr(getattr(self, "_vertex", None), "graph", None)
        if graph is not None:
            # Without an output name, every branch below this node: Send, models, Stream...
            graph.mark_branch(vertex_id=self._vertex.id, state="INACTIVE")
        return {}

    def _mark_flow_run(self, received: dict[str, Any]) -> None:
        # Streamlit Send's Rerun Flow only starts a new run when this run waited for the user.
        graph = getattr(getattr(self, "_vertex", None), "graph", None)
        context = getattr(graph, "context", None)
        if isinstance(context, dict):
            context[_BRIDGE_LISTEN_MARK] = str(received["session_id"])
