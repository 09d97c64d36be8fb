"""Streamlit Stream: run a language model and stream its reply into a chat tab token by token.

In Langflow 1.13 a model component streams only to Chat Output; wired to any other component it
is called without streaming and hands over the finished text. So this component takes the
language model itself (its "Language Model" output), calls it with streaming and forwards each
chunk as it is generated to the bridge's stream endpoint
(`POST /api/v1/sessions/{id}/messages/stream`, NDJSON `{"delta": ...}` lines in one chunked
request). The tab shows the reply growing; the bridge stores the whole text as one message.
"""

import json
import urllib.parse
from collections.abc import AsyncIterator
from typing import Any

import httpx
from lfx.custom import Component
from lfx.io import (
    DropdownInput,
    HandleInput,
    IntInput,
    MessageTextInput,
    MultilineInput,
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

# The stream request has no overall deadline (a long reply takes as long as the model needs);
# these bound connecting and each network operation, and waiting for the final answer.
_STREAM_TIMEOUT = 60.0


def _chunk_text(chunk: Any) -> str:
    """The text of one streamed chunk: str content, or the text parts of content blocks."""
    content = getattr(chunk, "content", chunk)
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # e.g. Anthropic: [{"type": "text", "text": "..."}, ...]
        parts = []
        for block in content:
            if isinstance(block, str):
                parts.append(block)
            elif isinstance(block, dict) and block.get("type") == "text":
                parts.append(str(block.get("text", "")))
        return "".join(parts)
    return ""


class StreamlitBridgeStream(Component):
    """Streams a language model's reply into a Streamlit chat session as it is generated."""

    display_name = "Streamlit Stream"
    description = (
        "Run a language model and stream its reply into a Streamlit chat session token by "
        "token (streamlit-bridge)."
    )
    icon = "Streamlit"
    name = "StreamlitBridgeStream"

    inputs = [  # noqa: RUF012 (Langflow reads these class attributes as declared)
        MessageTextInput(
            name="session_id",
            display_name="Session ID",
            info="Chat session to stream to: connect Streamlit Listen's Session ID. A typed id is "
            "replaced by the run's session_id when the run names one (Langflow does that to "
            "every unconnected input called session_id); to pin a session, connect Listen's "
            "Session ID or pass session_id in the run request.",
            value="",
            required=True,
        ),
        HandleInput(
            name="model",
            display_name="Language Model",
            input_types=["LanguageModel"],
            info="Connect the Language Model output of a model component (not its Model "
            "Response): this component calls the model itself, with streaming.",
            required=True,
        ),
        MessageTextInput(
            name="input_value",
            display_name="Prompt",
            info="What the model answers: connect Streamlit Listen's Message Content or a Prompt.",
            value="",
            required=True,
        ),
        MultilineInput(
            name="system_message",
            display_name="System Message",
            info="Optional instructions sent to the model before the prompt.",
            value="",
            advanced=True,
        ),
        DropdownInput(
            name="role",
            display_name="Role",
            options=["ai", "user"],
            info="Sender role of the streamed message.",
            value="ai",
            advanced=True,
        ),
        *_BRIDGE_CONNECTION_INPUTS,
    ]

    outputs = [  # noqa: RUF012
        Output(display_name="Text", name="text", method="stream_response", cache=False),
    ]

    async def stream_response(self) -> Message:
        """Stream the model's reply to the session; return the whole reply once stored."""
        base = _bridge_base_url(self.base_url, self.hostname, self.port)
        session_id, session_note = _bridge_run_session(self)
        session_path = _bridge_session_path(session_id)
        role = _bridge_role(self.role)
        model = self.model
        if model is None or not hasattr(model, "astream"):
            raise ValueError(
                "Language Model is not connected: connect the Language Model output of a model "
                f"component (got {type(model).__name__})."
            )
        model_input = self._model_input()
        # Check the bridge (reachable, key accepted, session id valid) before spending tokens:
        # a refusal after the model ran would waste the whole generation.
        await _bridge_request(
            "GET",
            base,
            session_path + "/messages",
            api_key=self.api_key,
            params={"limit": 1},
            expect=(200, 204, 404),
        )

        model_failure: list[BaseException] = []
        chunks_sent = 0
        sent: list[str] = []

        async def ndjson_body() -> AsyncIterator[bytes]:
            """The request body: one `{"delta": ...}` line per model chunk, as it is produced."""
            # httpx sends each yielded piece as one chunk of the request at once, so the tab
            # sees every token while the model is still generating the next one.
            nonlocal chunks_sent
            try:
                async for chunk in model.astream(model_input):
                    text = _chunk_text(chunk)
                    if text:
                        chunks_sent += 1
                        sent.append(text)
                        yield (json.dumps({"delta": text}) + "\n").encode()
            except Exception as exc:
                model_failure.append(exc)
                raise

        try:
            response = await _bridge_request(
                "POST",
                base,
                session_path + "/messages/stream",
                api_key=self.api_key,
                params={"role": role},
                headers={"Content-Type": "application/x-ndjson"},
                content=ndjson_body(),
                http_timeout=httpx.Timeout(_STREAM_TIMEOUT, connect=_BRIDGE_TIMEOUT),
            )
        except Exception as exc:
            if model_failure:
                cause = model_failure[0]
                raise RuntimeError(
                    f"The language model failed after {chunks_sent} chunk(s) were streamed: "
                    f"{type(cause).__name__}: {cause}"
                ) from cause
            stopped = await self._stopped_reply(base, session_path, "".join(sent))
            if stopped is None:
                raise exc from None
            # A user pressed Stop: the bridge stored the reply so far and closed the
            # request, and the model was not asked for more (its stream was closed).
            self.status = (
                f"Stopped in the chat after {chunks_sent} chunk(s); the partial reply is "
                f"stored as #{stopped.get('seq')}."
            )
            return Message(text=str(stopped.get("content", "")))
        stored = response.json()
        text = str(stored.get("content", "")) if isinstance(stored, dict) else ""
        self.status = f"Streamed {chunks_sent} chunk(s), stored as #{stored.get('seq')}."
        if session_note:
            self.status += " " + session_note
        return Message(text=text)

    async def _stopped_reply(
        self, base: str, session_path: str, sent: str
    ) -> dict[str, Any] | None:
        """The session's newest `ai` message if it is this reply cut by Stop (marked
        `stopped`, its text a beginning of what was sent), else None."""
        try:
            response = await _bridge_request(
                "GET",
                base,
                session_path + "/messages/last",
                api_key=self.api_key,
                params={"role": "ai"},
            )
            last = response.json()
        except Exception:  # the original error is the one to report
            return None
        if not isinstance(last, dict) or last.get("stopped") is not True:
            return None
        content = last.get("content")
        return last if isinstance(content, str) and sent.startswith(content) else None

    def _model_input(self) -> list[Any]:
        """Chat messages for the model: the system message (if any), then the prompt."""
        from langchain_core.messages import HumanMessage, SystemMessage

        prompt = _text_of(self.input_value)
        if not prompt.strip():
            raise ValueError(
                "Prompt is empty: connect Streamlit Listen's Message Content or a Prompt."
            )
        system = _text_of(self.system_message).strip()
        return (
            [SystemMessage(content=system), HumanMessage(content=prompt)]
            if system
            else [HumanMessage(content=prompt)]
        )
