"""Streamlit Send: post one chat message to a session of the streamlit-bridge.

Drop-in replacement for the documented Langflow "Send" component: the same inputs (names and
defaults), the same request (`POST /api/v1/sessions/{id}/messages`) and the same *Text* output
(the stored message as JSON text), plus a *Message* output (the stored message as a Langflow
Message, e.g. for Chat Output). What changed: it is async (it no longer blocks Langflow's event
loop), errors say what happened, and `rerun` never runs the flow nested inside itself.
"""

import json
import urllib.parse
from typing import Any

import httpx
from lfx.custom import Component
from lfx.io import (
    BoolInput,
    DropdownInput,
    IntInput,
    MessageTextInput,
    NestedDictInput,
    Output,
    SecretStrInput,
    StrInput,
)
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

_LANGFLOW_TIMEOUT = 10.0  # seconds; Langflow's webhook answers at once and runs in the background
_RERUN_MARK = "streamlit_bridge.next_run_started"  # set once a Send of this run started the next


class StreamlitBridgeSend(Component):
    """Posts a chat message to a Streamlit chat session through the streamlit-bridge."""

    display_name = "Streamlit Send"
    description = "Send a message to a Streamlit chat session (streamlit-bridge)."
    icon = "Streamlit"
    name = "StreamlitBridgeSend"

    inputs = [  # noqa: RUF012 (Langflow reads these class attributes as declared)
        MessageTextInput(
            name="session_id",
            display_name="Session ID",
            info="Chat session to post to: connect Streamlit Listen's Session ID. A typed id is "
            "replaced by the run's session_id when the run names one (Langflow does that to "
            "every unconnected input called session_id); to pin a session, connect Listen's "
            "Session ID or pass session_id in the run request. A session that does not exist "
            "yet is created (its tab shows the message as history).",
            placeholder="Enter the session ID",
            value="",
            required=True,
        ),
        DropdownInput(
            name="role",
            display_name="Role",
            options=["ai", "user"],
            info="Message sender role.",
            value="ai",
            required=True,
        ),
        MessageTextInput(
            name="message",
            display_name="Message",
            info="Content of the message that will be sent.",
            value="",
            required=True,
        ),
        DropdownInput(
            name="message_type",
            display_name="Message Type",
            options=["text", "image"],
            info="'text' (markdown) or 'image' (the message is an image URL).",
            value="text",
            advanced=True,
        ),
        NestedDictInput(
            name="tweaks",
            display_name="Tweaks",
            info="Does nothing: kept only so that flows saved with the documented Send still "
            "load. Rerun Flow starts the flow as saved, through Langflow's webhook.",
            value={},
            advanced=True,
        ),
        *_BRIDGE_CONNECTION_INPUTS,
        BoolInput(
            name="rerun",
            display_name="Rerun Flow",
            info="Never runs the flow nested inside this one (the documented Send did, so it never "
            "returned). When on and a Langflow URL is set, asks Langflow to start one new, "
            "separate run of this flow after the message is stored (POST "
            "<Langflow URL>/api/v1/webhook/<flow id>), so its Streamlit Listen waits for the next "
            "user message. Only if Streamlit Listen ran in this run (else the flow would loop). "
            "Without a Langflow URL it does nothing. Langflow's webhook needs a Langflow API "
            "Key by default.",
            value=True,
            advanced=True,
        ),
        StrInput(
            name="langflow_url",
            display_name="Langflow URL",
            info="Where Rerun Flow reaches Langflow, e.g. http://localhost:7860. Empty: no rerun.",
            value="",
            advanced=True,
        ),
        SecretStrInput(
            name="langflow_api_key",
            display_name="Langflow API Key",
            info="A Langflow API key (Settings > API Keys) for Rerun Flow: Langflow's webhook "
            "requires one unless LANGFLOW_WEBHOOK_AUTH_ENABLE is false.",
            value="",
            required=False,
            advanced=True,
        ),
    ]

    # Both outputs show the one message stored per run (see _stored); group_outputs shows both
    # in the editor at once instead of a dropdown.
    outputs = [  # noqa: RUF012
        Output(
            display_name="Text",
            name="text",
            method="text_response",
            cache=False,
            group_outputs=True,
        ),
        Output(
            display_name="Message",
            name="stored_message",
            method="message_response",
            cache=False,
            group_outputs=True,
        ),
    ]

    def _pre_run_setup(self) -> None:
        # Called once per run before the outputs are built: send afresh in each run.
        self._stored: dict[str, Any] | None = None

    async def text_response(self) -> Message:
        """Store the message in the session; return the stored message as JSON text."""
        return Message(text=json.dumps(await self._send()))

    async def message_response(self) -> Message:
        """Store the message in the session; return it as a Message (e.g. for Chat Output)."""
        stored = await self._send()
        ai = stored.get("role") == "ai"
        return Message(
            text=str(stored.get("content", "")),
            sender="Machine" if ai else "User",
            sender_name="AI" if ai else "User",
        )

    async def _send(self) -> dict[str, Any]:
        """Post the message once per run, whichever outputs are connected."""
        stored = getattr(self, "_stored", None)
        if stored is not None:
            return stored
        base = _bridge_base_url(self.base_url, self.hostname, self.port)
        session_id, session_note = _bridge_run_session(self)
        path = _bridge_session_path(session_id) + "/messages"
        body = {
            "role": _bridge_role(self.role),
            "content": _text_of(self.message),
            "type": _text_of(self.message_type).strip() or "text",
        }
        langflow_url = self._langflow_url()  # checked before anything is sent
        response = await _bridge_request("POST", base, path, api_key=self.api_key, json=body)
        stored = response.json()
        if not isinstance(stored, dict):
            raise RuntimeError(
                f"The Streamlit bridge at {base} sent an unexpected answer: {stored!r:.300}"
            )
        self._stored = stored
        note = await self._start_next_run(langflow_url, str(stored.get("session_id", "")))
        self.status = " ".join(
            part
            for part in (
                f"Stored as #{stored.get('seq')} in session {stored.get('session_id')}.",
                session_note,
                note,
            )
            if part
        )
        return stored

    def _langflow_url(self) -> str:
        """Langflow's root URL for Rerun Flow; empty when Rerun Flow is off or has no URL."""
        if not self.rerun:
            return ""
        url = _text_of(self.langflow_url).strip().rstrip("/")
        if url and not url.startswith(("http://", "https://")):
            raise ValueError(f"Langflow URL must start with http:// or https://, got {url!r}.")
        return url

    async def _start_next_run(self, langflow_url: str, session_id: str) -> str:
        """Ask Langflow for one new top-level run of this flow (never a nested one).

        Returns a note for the component's status. Nested `run_flow`, as the documented Send
        did, waits inside this run for the next run to finish, which waits for the next user
        message: it never returned and nested one level deeper per chat turn.
        """
        if not self.rerun:
            return "Rerun is off."
        if not langflow_url:
            return "Rerun: no Langflow URL set, nothing started."
        graph = getattr(getattr(self, "_vertex", None), "graph", None)
        flow_id = getattr(graph, "flow_id", None)
        context = getattr(graph, "context", None)
        if not flow_id or not isinstance(context, dict):
            return "Rerun: this run has no flow id (not started by Langflow), nothing started."
        if not context.get(_BRIDGE_LISTEN_MARK):
            return (
                "Rerun: no Streamlit Listen ran in this flow run, so a new run would not wait for "
                "the user and would repeat itself; nothing started."
            )
        if context.get(_RERUN_MARK):
            # A second Send in the same run: one more run per run, or the runs would multiply.
            return "Rerun: the next run was already started by another Send of this run."
        path = f"/api/v1/webhook/{urllib.parse.quote(str(flow_id), safe='')}"
        try:
            async with httpx.AsyncClient(timeout=_LANGFLOW_TIMEOUT) as client:
                response = await client.post(
                    langflow_url + path,
                    json={"source": "streamlit-bridge", "session_id": session_id},
                    headers=_bridge_headers(self.langflow_api_key),
                )
        except httpx.HTTPError as exc:
            raise ConnectionError(
                f"The message was delivered, but Rerun Flow could not reach Langflow at "
                f"{langflow_url} ({type(exc).__name__}: {str(exc) or 'no details'})."
            ) from None
        if response.status_code not in (200, 202):
            hint = ""
            if response.status_code in (401, 403):
                hint = (
                    " Set Langflow API Key to a Langflow API key (Langflow's webhook requires "
                    "one by default)."
                )
            raise RuntimeError(
                f"The message was delivered, but Langflow at {langflow_url} refused to start the "
                f"next run (HTTP {response.status_code}): "
                f"{_bridge_error_detail(response).rstrip('.')}.{hint}"
            )
        context[_RERUN_MARK] = True
        return "Rerun: Langflow started the next run."
